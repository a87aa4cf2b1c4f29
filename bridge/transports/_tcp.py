"""TCP helpers: listeners that can share a port across processes, TCP_NODELAY, serve_tcp.

The daemon runs one process per core (ARCHITECTURE.md, "Scaling"); every process binds
the same call-leg port with ``SO_REUSEPORT`` and the kernel spreads new connections
across them. ``trio.open_tcp_listeners`` cannot set that option, hence this module.
"""

from __future__ import annotations

import errno
import functools
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

__all__ = ["open_tcp_listener", "open_tcp_listeners", "serve_tcp", "set_nodelay", "socket_of"]

# Linux and the BSDs store the backlog in a uint16 without overflow protection; the
# kernel caps it at net.core.somaxconn anyway (same rule as trio.open_tcp_listeners).
_MAX_BACKLOG = 0xFFFF


def _backlog(backlog: int | None) -> int:
    if backlog is None:
        return _MAX_BACKLOG
    if backlog < 1:
        raise ValueError(f"backlog must be positive, not {backlog}")
    return min(backlog, _MAX_BACKLOG)


async def _bind_listener(
    family: int,
    type_: int,
    proto: int,
    sockaddr: tuple[str, int] | tuple[str, int, int, int],
    *,
    reuse_port: bool,
    backlog: int,
) -> trio.SocketListener:
    sock = trio.socket.socket(family, type_, proto)
    try:
        # SO_REUSEADDR: a restarted daemon can bind while old connections sit in TIME_WAIT.
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        if reuse_port:
            # SO_REUSEPORT: several processes (one per core) bind the same port and the
            # kernel load-balances accepted connections between them.
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
        if family == stdlib_socket.AF_INET6:
            # One listener per family; without V6ONLY the "::" socket would also claim
            # the IPv4 wildcard and the "0.0.0.0" bind would fail.
            sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
        await sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _resolve_passive(host: str | None, port: int) -> list[tuple[int, int, int, tuple[str, int] | tuple[str, int, int, int]]]:
    infos = await trio.socket.getaddrinfo(
        host, port, type=stdlib_socket.SOCK_STREAM, flags=stdlib_socket.AI_PASSIVE
    )
    result: list[tuple[int, int, int, tuple[str, int] | tuple[str, int, int, int]]] = []
    for family, type_, proto, _canonname, sockaddr in infos:
        if family in (stdlib_socket.AF_INET, stdlib_socket.AF_INET6):
            result.append((int(family), int(type_), proto, sockaddr))  # type: ignore[arg-type]
    if not result:
        raise OSError(errno.EADDRNOTAVAIL, f"no IPv4/IPv6 address for {host!r}")
    return result


async def open_tcp_listener(
    host: str | None,
    port: int,
    *,
    reuse_port: bool = False,
    backlog: int | None = None,
) -> trio.SocketListener:
    """Bind one TCP listener on the first address ``host`` resolves to.

    ``SO_REUSEADDR`` is always set; ``SO_REUSEPORT`` when ``reuse_port`` is true. Port 0
    binds an ephemeral port: read it back with ``listener.socket.getsockname()``.
    """
    family, type_, proto, sockaddr = (await _resolve_passive(host, port))[0]
    return await _bind_listener(
        family, type_, proto, sockaddr, reuse_port=reuse_port, backlog=_backlog(backlog)
    )


async def open_tcp_listeners(
    host: str | None,
    port: int,
    *,
    reuse_port: bool = False,
    backlog: int | None = None,
) -> list[trio.SocketListener]:
    """Bind a TCP listener on every address ``host`` resolves to (``None``: all interfaces).

    Like ``trio.open_tcp_listeners`` plus ``reuse_port``. With port 0 and several
    addresses each listener gets its own ephemeral port.
    """
    listeners: list[trio.SocketListener] = []
    try:
        for family, type_, proto, sockaddr in await _resolve_passive(host, port):
            listeners.append(
                await _bind_listener(
                    family, type_, proto, sockaddr, reuse_port=reuse_port, backlog=_backlog(backlog)
                )
            )
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    """The socket under ``stream`` (a SocketStream, or an SSLStream over one)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    raise TypeError(f"not a socket stream: {stream!r}")


def set_nodelay(stream: trio.abc.Stream, enabled: bool = True) -> None:
    """Set TCP_NODELAY (disable Nagle) on a SocketStream or an SSLStream over one.

    Small real-time frames (20 ms of audio) must not wait for an ACK to be coalesced;
    AudioSocket peers require it. ``trio.SocketStream`` already enables it on creation,
    this makes the requirement explicit and works on any socket-backed stream.
    """
    socket_of(stream).setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, int(enabled))


def listener_addresses(listeners: list[trio.SocketListener]) -> list[tuple[str, int]]:
    """The (host, port) each listener is bound to (after port 0 was resolved)."""
    addresses: list[tuple[str, int]] = []
    for listener in listeners:
        name = listener.socket.getsockname()
        addresses.append((str(name[0]), int(name[1])))
    return addresses


async def _with_nodelay(
    handler: Callable[[trio.SocketStream], Awaitable[object]], stream: trio.SocketStream
) -> None:
    set_nodelay(stream)
    await handler(stream)


async def serve_tcp(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    host: str | None,
    port: int,
    *,
    reuse_port: bool = False,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept TCP connections forever, running ``handler(stream)`` for each in a new task.

    ``task_status.started`` reports the bound ``(host, port)`` list, so callers can bind
    port 0 and read the real port. As with ``trio.serve_listeners``, a handler that
    raises crashes the server: catch what you expect inside the handler. The stream is
    not closed for the handler; use ``async with stream:``.
    """
    listeners = await open_tcp_listeners(host, port, reuse_port=reuse_port, backlog=backlog)
    addresses = listener_addresses(listeners)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                trio.serve_listeners,
                functools.partial(_with_nodelay, handler),
                listeners,
                handler_nursery=handler_nursery,
            )
        )
        task_status.started(addresses)
    raise AssertionError("unreachable: serve_listeners never returns")  # pragma: no cover
