"""UDP: bound sockets, the RTP port pool, and the datagram socket media runs on.

One process per core uses a disjoint RTP port range (ARCHITECTURE.md, "Scaling"); inside
a process the pool hands out one bound socket per RTP stream. Other programs may hold
ports inside the range too: a port that fails with EADDRINUSE is skipped, not an error.

:class:`DatagramSocket` is the socket I/O of a media leg (the RTP call leg): a batched,
non-blocking receive loop and a ``sendto`` that never waits. It moves datagrams and
knows nothing of RTP.
"""

from __future__ import annotations

import errno
import socket as stdlib_socket
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs
import trio

from .._errors import TransportError

__all__ = ["Address", "DatagramSocket", "UdpPortPool", "open_udp_socket"]

#: A socket address as the socket module gives it: ``(host, port)`` or, for IPv6,
#: ``(host, port, flowinfo, scope_id)``.
Address = tuple[Any, ...]

#: Receive buffer per datagram: L16 at 48 kHz, 60 ms is 5,760 bytes plus the header.
MAX_DATAGRAM: Final = 8192
#: Datagrams read per wake-up before yielding (a flood must not starve other tasks).
READ_BATCH: Final = 64


def _family_for(host: str) -> int:
    # Literal addresses only: an RTP bind address comes from config, never from DNS.
    return stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET


async def open_udp_socket(host: str, port: int) -> trio.socket.SocketType:
    """A UDP socket bound to ``(host, port)``; port 0 picks a free port.

    Read the bound port back with ``sock.getsockname()[1]``. The caller owns the socket
    and must close it.
    """
    sock = trio.socket.socket(_family_for(host), stdlib_socket.SOCK_DGRAM)
    try:
        await sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@attrs.define(eq=False)
class UdpPortPool:
    """Bound UDP sockets on ports from ``first_port..last_port`` (inclusive).

    ``allocate()`` binds the next free port after the last one handed out (round robin,
    so a port just released is not reused at once: stray RTP for the previous call would
    land on the next one), skipping ports that another program holds (EADDRINUSE).
    ``release(port)`` closes that socket and frees the port. ``step=2`` hands out only
    ports with the parity of ``first_port`` (RTP on even ports, RTCP on the odd ones,
    RFC 3550 §11).
    """

    host: str
    first_port: int
    last_port: int
    step: int = 1
    _sockets: dict[int, trio.socket.SocketType] = attrs.field(init=False, factory=dict)
    _next: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.first_port <= self.last_port <= 65535:
            raise ValueError(f"invalid port range {self.first_port}-{self.last_port}")
        if self.step < 1:
            raise ValueError(f"step must be positive, not {self.step}")
        self._next = self.first_port

    @property
    def size(self) -> int:
        """How many ports the range holds."""
        return (self.last_port - self.first_port) // self.step + 1

    @property
    def in_use(self) -> int:
        """How many ports this pool has handed out and not released."""
        return len(self._sockets)

    async def allocate(self) -> tuple[trio.socket.SocketType, int]:
        """Bind the next free port; return ``(socket, port)``.

        The pool keeps a reference to the socket and closes it on ``release(port)``.
        Raises ``TransportError`` when every port of the range is taken.
        """
        size = self.size
        port = self._next
        for _ in range(size):
            candidate = port
            port += self.step
            if port > self.last_port:
                port = self.first_port
            if candidate in self._sockets:
                continue
            try:
                sock = await open_udp_socket(self.host, candidate)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue  # held by another program: try the next one
                raise
            self._sockets[candidate] = sock
            self._next = port
            return sock, candidate
        raise TransportError(
            f"RTP port range exhausted: {self.host} {self.first_port}-{self.last_port}"
            f" ({self.in_use} in use by this process, the rest by others)"
        )

    def release(self, port: int) -> None:
        """Close the socket bound to ``port`` and make the port available again.

        Releasing a port that is not allocated is a no-op (release is idempotent).
        """
        sock = self._sockets.pop(port, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Release every port (e.g. when the daemon shuts down)."""
        for port in list(self._sockets):
            self.release(port)


@attrs.define(slots=True, eq=False)
class DatagramSocket:
    """A bound UDP socket whose per-datagram paths are synchronous (a media leg's I/O).

    Build it with :meth:`take`: it takes the socket over (a Trio socket is detached) and
    alone owns the descriptor from then on, so that it is closed exactly once.

    * Receive: ``await serve_reader(on_datagram)`` waits with Trio for the socket to be
      readable, then reads up to ``READ_BATCH`` datagrams with non-blocking ``recvfrom``
      and calls ``on_datagram(data, address, now)`` inline for each (``now`` is
      ``trio.current_time()`` of the wake-up). Waiting first and then draining means no
      failed speculative receive per datagram (PERFORMANCE.md). A receive error (an ICMP
      error for an earlier send surfacing as ECONNREFUSED) is counted in
      ``receive_errors`` and passed to ``on_error("receive", exc)``; the socket stays
      usable.
    * Send: ``send(packet)`` to :attr:`destination` with one non-blocking ``sendto``
      (a Trio ``send`` costs two checkpoints, PERFORMANCE.md). Real-time media waits for
      nothing (RFC 3550 §2.1: a late packet is worth nothing): a full send buffer
      (EAGAIN) drops the packet, counted in ``dropped``; no destination yet counts in
      ``no_destination``; another error (no route, ...) in ``errors`` and, unless it is
      the ECONNREFUSED of an ICMP port unreachable, ``on_error("send", exc)``.
    * ``close()``: idempotent; a reader blocked on the socket wakes with
      ``trio.ClosedResourceError``.
    """

    _sock: stdlib_socket.socket | None
    local_address: Address
    #: Where ``send`` goes; None until the owner knows (a latched source, say).
    destination: Address | None = None
    on_error: Callable[[str, OSError], None] | None = None
    # -- counters (plain ints, read by the owner's records) ------------------------------
    sent: int = 0
    no_destination: int = 0
    dropped: int = 0
    errors: int = 0
    receive_errors: int = 0

    @classmethod
    def take(
        cls,
        sock: trio.socket.SocketType | stdlib_socket.socket,
        *,
        destination: Address | None = None,
        on_error: Callable[[str, OSError], None] | None = None,
    ) -> DatagramSocket:
        """Take over the bound ``sock`` (a Trio socket becomes an empty shell whose
        ``close`` does nothing; ``UdpPortPool.release`` may still call it)."""
        if isinstance(sock, stdlib_socket.socket):
            owned = sock
        else:
            owned = stdlib_socket.socket(fileno=sock.detach())
        owned.setblocking(False)
        return cls(owned, owned.getsockname(), destination, on_error)

    @property
    def socket(self) -> stdlib_socket.socket | None:
        """The socket until ``close`` (then None; the object is closed)."""
        return self._sock

    async def serve_reader(self, on_datagram: Callable[[bytes, Address, float], None]) -> NoReturn:
        """Hand every datagram to ``on_datagram`` until cancelled; raises
        ``trio.ClosedResourceError`` when the socket is (or gets) closed."""
        sock = self._sock
        if sock is None:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the socket is closed")
        recvfrom = sock.recvfrom
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        while True:
            await wait_readable(sock)
            now = current_time()
            for _ in range(READ_BATCH):
                try:
                    data, addr = recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self.receive_errors += 1
                    if self.on_error is not None:
                        self.on_error("receive", exc)
                    break
                on_datagram(data, addr, now)

    def send(self, packet: bytes) -> None:
        """Send ``packet`` to ``destination`` now, or drop it and count why."""
        dest = self.destination
        if dest is None:
            self.no_destination += 1
            return
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(packet, dest)
        except BlockingIOError:
            self.dropped += 1  # never wait on the per-packet path: drop and count
            return
        except OSError as exc:
            # ICMP errors surfacing (ECONNREFUSED), no route: the media carries on.
            self.errors += 1
            if exc.errno != errno.ECONNREFUSED and self.on_error is not None:
                self.on_error("send", exc)
            return
        self.sent += 1

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            # Wake a reader still blocked on it (ClosedResourceError), then close.
            trio.lowlevel.notify_closing(sock)
            sock.close()
