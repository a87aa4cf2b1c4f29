"""UDP helpers: bound sockets and the RTP port pool.

One process per core uses a disjoint RTP port range (ARCHITECTURE.md, "Scaling"); inside
a process the pool hands out one bound socket per RTP stream. Other programs may hold
ports inside the range too: a port that fails with EADDRINUSE is skipped, not an error.
"""

from __future__ import annotations

import errno
import socket as stdlib_socket

import attrs
import trio

from .._errors import TransportError

__all__ = ["UdpPortPool", "open_udp_socket"]


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
