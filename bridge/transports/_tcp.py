"""TCP helpers: listeners that can share a port across processes, TCP_NODELAY, serve_tcp,
and the admission-controlled accept loop of the call-leg listeners.

The daemon runs one process per core (ARCHITECTURE.md, "Scaling"); every process binds
the same call-leg port with ``SO_REUSEPORT`` and the kernel spreads new connections
across them. ``trio.open_tcp_listeners`` cannot set that option, hence this module.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import socket as stdlib_socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from ._addr import format_peer
from ._admission import Admission, Pending, Refusal

__all__ = [
    "open_tcp_listener",
    "open_tcp_listeners",
    "raise_open_files_limit",
    "serve_admitted",
    "serve_tcp",
    "set_nodelay",
    "socket_of",
]

logger = logging.getLogger("bridge.transports")

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


async def _resolve_passive(
    host: str | None, port: int
) -> list[tuple[int, int, int, tuple[str, int] | tuple[str, int, int, int]]]:
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


# ======================================================================= admitted accept

#: accept(2) errors that mean the machine is out of something (fds, memory): back off.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_CAPACITY_BACKOFF_S = 0.1
#: accept(2) errors about one connection that died in the queue: take the next one.
_IGNORED_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ECONNRESET",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
)
#: SO_LINGER on, timeout 0: close() sends RST and frees the socket at once, with no
#: TIME_WAIT left on our side (refused connections may come by the thousand).
_LINGER_ABORT = struct.pack("ii", 1, 0)

Peer = tuple[str, int]
AdmittedHandler = Callable[[trio.SocketStream, Peer, Pending], Awaitable[object]]


def _abort(sock: trio.socket.SocketType) -> None:
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    sock.close()


async def _accept_loop(
    listener: trio.SocketListener,
    admission: Admission,
    handler: AdmittedHandler,
    nursery: trio.Nursery,
    on_refused: Callable[[Peer, Refusal], None] | None,
    busy: _Busy | None,
) -> NoReturn:
    sock_listener = listener.socket
    last_complaint = -1e9
    while True:
        try:
            sock, address = await sock_listener.accept()
        except OSError as exc:
            if exc.errno in _IGNORED_ERRNOS:
                continue
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            # Out of fds or memory: back off rather than spin; one line a second at most.
            now = trio.current_time()
            if now - last_complaint >= 1.0:
                last_complaint = now
                logger.warning(
                    "accept on %s failed: %s; retrying every %gs",
                    format_peer(_sockname(sock_listener)),
                    os.strerror(exc.errno or 0),
                    _CAPACITY_BACKOFF_S,
                )
            await trio.sleep(_CAPACITY_BACKOFF_S)
            continue
        # The address accept(2) returned: getpeername() fails once the peer has reset
        # (ENOTCONN), which is how bad-peer lines used to name the peer ":0".
        peer: Peer = (str(address[0]), int(address[1])) if address else ("", 0)
        pending = admission.admit(peer[0])
        if isinstance(pending, Pending):
            nursery.start_soon(handler, trio.SocketStream(sock), peer, pending)
            continue
        if on_refused is not None:
            on_refused(peer, pending)
        if pending == "too_many_pending" and busy is not None and busy.running < busy.limit:
            busy.running += 1
            nursery.start_soon(busy.run, trio.SocketStream(sock))
        else:
            _abort(sock)


def _sockname(sock: trio.socket.SocketType) -> Peer:
    name = sock.getsockname()
    return (str(name[0]), int(name[1]))


class _Busy:
    """Answers for connections over the listener's total (a canned 503), at most
    ``limit`` at once; beyond that they are closed like per-peer refusals."""

    def __init__(self, answer: Callable[[trio.SocketStream], Awaitable[object]], limit: int):
        self.answer = answer
        self.limit = limit
        self.running = 0

    async def run(self, stream: trio.SocketStream) -> None:
        try:
            await self.answer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.running -= 1
            await trio.aclose_forcefully(stream)


async def serve_admitted(
    handler: AdmittedHandler,
    listeners: Sequence[trio.SocketListener],
    admission: Admission,
    *,
    on_refused: Callable[[Peer, Refusal], None] | None = None,
    busy_answer: Callable[[trio.SocketStream], Awaitable[object]] | None = None,
    max_busy_answers: int = 32,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept on every listener forever, admitting each connection against ``admission``.

    An admitted connection runs ``handler(stream, peer, pending)`` in a task of this
    server's nursery; the handler releases ``pending`` once the connection has proved
    itself (it is released anyway when the handler returns). The handler owns the
    stream: it closes it, or hands it on to something that outlives the handler (an
    AudioSocket call's stream). A refused connection never gets
    a task: ``on_refused(peer, reason)`` is called and the socket is reset at once --
    except, when ``busy_answer`` is given, up to ``max_busy_answers`` connections
    refused for the *total* limit get ``busy_answer(stream)`` (an HTTP 503) first.
    Nobody already admitted is ever evicted. ``peer`` is the address accept(2) gave,
    good even after the peer has reset. The server owns and closes the listeners; a
    handler must catch what it expects (an exception here stops the server).
    """
    busy = _Busy(busy_answer, max_busy_answers) if busy_answer is not None else None

    async def run(stream: trio.SocketStream, peer: Peer, pending: Pending) -> None:
        try:
            await handler(stream, peer, pending)
        finally:
            pending.release()

    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    _accept_loop, listener, admission, run, nursery, on_refused, busy
                )
            task_status.started()
    finally:
        for listener in listeners:
            listener.socket.close()
    raise AssertionError("unreachable: the accept loops never return")  # pragma: no cover


# ======================================================================= process limits


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit if it is lower.

    Every call holds two or three descriptors and every pending connection one; the
    usual soft default (1024) is far below what ``max_streams`` and the pending limits
    need, while the hard limit (systemd: ``LimitNOFILE``) is what the operator meant
    to grant. Returns ``(before, after, hard)``; unchanged if it cannot be raised.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft NOFILE; nr_open is the real ceiling.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            return soft, soft, hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft, hard
        return soft, target, hard
    return soft, soft, hard
