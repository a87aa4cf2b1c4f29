"""TCP listener helpers, the UDP (RTP) port pool and the datagram socket, on real
loopback sockets."""

from __future__ import annotations

import collections
import errno
import functools
import random
import socket
from typing import Any

import pytest
import trio

from bridge import TransportError
from bridge.transports import (
    DatagramSocket,
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


# ------------------------------------------------------------------- DatagramSocket


def _peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_datagram_socket_takes_the_descriptor_over() -> None:
    trio_sock = await open_udp_socket("127.0.0.1", 0)
    bound = trio_sock.getsockname()
    ds = DatagramSocket.take(trio_sock)
    owned = ds.socket
    assert owned is not None and not owned.getblocking()
    assert trio_sock.fileno() == -1  # detached: its close() does nothing now
    trio_sock.close()
    assert ds.local_address == bound and owned.fileno() >= 0
    ds.close()
    ds.close()  # idempotent
    assert ds.socket is None and owned.fileno() == -1


async def test_datagram_socket_hands_over_every_datagram_in_batches(
    nursery: trio.Nursery,
) -> None:
    ds = DatagramSocket.take(await open_udp_socket("127.0.0.1", 0))
    peer = _peer()
    got: list[tuple[bytes, Any, float]] = []
    done = trio.Event()

    def on_datagram(data: bytes, addr: Any, now: float) -> None:
        got.append((data, addr, now))
        if len(got) == 100:
            done.set()

    # Queued before the reader runs: the first wake-ups find a backlog.
    for n in range(100):
        peer.sendto(n.to_bytes(2, "big"), ds.local_address)

    async def reader() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await ds.serve_reader(on_datagram)

    with trio.fail_after(5):
        nursery.start_soon(reader)
        await done.wait()
    assert [int.from_bytes(d, "big") for d, _, _ in got] == list(range(100))
    assert {addr for _, addr, _ in got} == {peer.getsockname()}
    # One ``now`` per wake-up, and no wake-up reads more than its batch.
    per_wakeup = collections.Counter(now for _, _, now in got)
    assert len(per_wakeup) >= 2 and max(per_wakeup.values()) <= 64
    ds.close()  # wakes the reader: ClosedResourceError
    peer.close()


async def test_datagram_socket_sends_to_its_destination_or_counts_why_not() -> None:
    peer = _peer()
    peer.settimeout(5)
    ds = DatagramSocket.take(await open_udp_socket("127.0.0.1", 0))
    ds.send(b"nowhere")
    assert (ds.sent, ds.no_destination) == (0, 1)
    ds.destination = peer.getsockname()
    ds.send(b"one")
    assert peer.recvfrom(2048) == (b"one", ds.local_address)
    assert (ds.sent, ds.no_destination, ds.dropped, ds.errors) == (1, 1, 0, 0)
    ds.close()
    ds.send(b"after close")  # nothing, no error
    assert ds.sent == 1
    peer.close()


async def test_datagram_socket_send_errors_are_counted_and_reported() -> None:
    errors: list[tuple[str, OSError]] = []
    ds = DatagramSocket.take(
        await open_udp_socket("127.0.0.1", 0), on_error=lambda op, exc: errors.append((op, exc))
    )
    ds.destination = ("::1", 9)  # an IPv6 destination from an IPv4 socket: refused at once
    ds.send(b"x")
    assert (ds.sent, ds.errors) == (0, 1)
    assert [op for op, _ in errors] == ["send"]
    ds.close()
