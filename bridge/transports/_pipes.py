"""Byte pipes with a non-blocking send path, for the per-frame code.

The Stream sends from inside the Ticker's callback and the readers' decode step, where it
must not await: a ``trio`` socket ``send`` is two checkpoints (about 20 µs here,
PERFORMANCE.md) before its syscall. ``NowaitWriter`` writes straight to the non-blocking
file descriptor instead and keeps whatever the kernel did not take as a backlog, which a
writer task flushes with ``wait_writable`` under the send deadline. On a healthy
connection the writer task never wakes.

``TcpPipe.receive`` waits for readability *before* reading, so a paced peer costs one
``read`` per message instead of a failed speculative ``recv`` plus the real one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import attrs
import trio

from .._errors import ConnectionClosed, TransportTimeout

__all__ = ["NowaitWriter", "TcpPipe"]

_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN)


@attrs.define(slots=True, eq=False)
class NowaitWriter:
    """Non-blocking writes to a connected stream socket's fd, with a flushed backlog."""

    fd: int
    send_timeout_s: float = 2.0
    max_backlog_bytes: int = 4 << 20
    _backlog: bytearray = attrs.field(factory=bytearray)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    closed: bool = False
    error: str | None = None
    bytes_sent: int = 0

    @property
    def backlog_bytes(self) -> int:
        return len(self._backlog)

    def send_nowait(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionClosed(None, self.error or "closed")
        if self._backlog:
            if len(self._backlog) + len(data) > self.max_backlog_bytes:
                self._fail("send backlog over its limit")
                raise ConnectionClosed(None, self.error or "")
            self._backlog += data
            return
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            raise ConnectionClosed(None, self.error or "") from exc
        self.bytes_sent += n
        if n < len(data):
            self._backlog += memoryview(data)[n:]
            self._wake.set()

    def _fail(self, why: str) -> None:
        self.closed = True
        self.error = why
        self._wake.set()

    async def serve_writer(self, on_drained: Callable[[], None] | None = None) -> None:
        """Flush the backlog whenever there is one; raise when it cannot be flushed
        within ``send_timeout_s`` (a timed-out send means a dead connection)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.closed:
                if self.error:
                    raise ConnectionClosed(None, self.error)
                return
            with trio.move_on_after(self.send_timeout_s) as scope:
                await self._write_backlog()
            if scope.cancelled_caught:
                self._fail(f"send timed out after {self.send_timeout_s:g}s")
                raise TransportTimeout("send", self.send_timeout_s)
            if on_drained is not None:
                on_drained()

    async def flush(self, timeout_s: float) -> None:
        """Best effort: write out the backlog within ``timeout_s`` (used on close)."""
        with trio.move_on_after(timeout_s):
            try:
                await self._write_backlog()
            except ConnectionClosed:
                return

    async def _write_backlog(self) -> None:
        """Write the backlog as fast as the kernel takes it; unbounded in time (the
        callers' cancel scopes bound it). A write error fails the writer."""
        while self._backlog and not self.closed:
            await trio.lowlevel.wait_writable(self.fd)
            try:
                n = os.write(self.fd, self._backlog)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._fail(exc.strerror or str(exc))
                raise ConnectionClosed(None, self.error or "") from exc
            self.bytes_sent += n
            del self._backlog[:n]


@attrs.define(slots=True, eq=False)
class TcpPipe:
    """A connected TCP stream: raw bytes in, raw bytes out (no message framing)."""

    stream: trio.SocketStream
    send_timeout_s: float = 2.0
    #: Bytes the kernel has not taken that may wait in the backlog before the pipe
    #: fails (the peer is not reading).
    max_backlog_bytes: int = 4 << 20
    writer: NowaitWriter = attrs.field(init=False)
    _fd: int = attrs.field(init=False)
    _closed: bool = False
    #: Set by a reader in poll mode (``read_ready``): called when the pipe closes, so
    #: that a reader waiting on the poller and not on the fd hears of it.
    poll_wake: Callable[[], None] | None = None

    def __attrs_post_init__(self) -> None:
        self._fd = self.stream.socket.fileno()
        self.writer = NowaitWriter(self._fd, self.send_timeout_s, self.max_backlog_bytes)

    @property
    def backlog_bytes(self) -> int:
        return self.writer.backlog_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def send_nowait(self, message: bytes | str) -> None:
        if not isinstance(message, bytes):
            raise TypeError("a TCP pipe carries bytes, not text")
        if message:
            self.writer.send_nowait(message)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next chunk; raises ``ConnectionClosed`` at EOF or on a reset."""
        while True:
            if self._closed:
                raise ConnectionClosed(None, "closed")
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                raise ConnectionClosed(None, "closed") from None
            if self._closed:
                raise ConnectionClosed(None, "closed")
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                continue  # spurious wake-up
            except OSError as exc:
                if exc.errno in _GONE:
                    raise ConnectionClosed(None, exc.strerror or "reset") from exc
                raise ConnectionClosed(None, str(exc)) from exc
            if not data:
                raise ConnectionClosed(None, "EOF")
            return data

    def fileno(self) -> int:
        """The socket's fd, for a read poller (-1 once closed)."""
        return -1 if self._closed else self._fd

    def read_ready(self) -> list[bytes] | None:
        """Poll mode (see ``transports.Poller``): one non-blocking read. The chunk read
        (``[]`` if nothing was there), or None when ``receive()`` must take over: EOF,
        an error, or closed. EOF and resets are sticky, so ``receive()`` sees them too."""
        if self._closed:
            return None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not data:
            return None
        return [data]

    async def serve_writer(self, on_drained: Callable[[], None] | None = None) -> None:
        await self.writer.serve_writer(on_drained)

    async def aclose(self, code: int = 1000, reason: str = "", flush_timeout_s: float = 0.5) -> None:
        """Flush what is queued (bounded), then close. ``code``/``reason`` exist for
        the ``Pipe`` interface; TCP has no close reason."""
        if self._closed:
            return
        with trio.CancelScope(shield=True):
            await self.writer.flush(flush_timeout_s)
        self._closed = True
        self.writer.closed = True
        self.writer._wake.set()
        if self.poll_wake is not None:
            self.poll_wake()
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
