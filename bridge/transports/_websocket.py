"""WebSocket client and server on the ``websockets`` sans-IO protocol objects over Trio streams.

Why this shape (PERFORMANCE.md): the per-message path is the hottest code in the daemon.
``websockets``' ``ClientProtocol``/``ServerProtocol`` do the framing (C-accelerated
masking) and this module does the I/O with no background reader task, no channels and
no per-message task hand-offs:

* ``receive()`` is called by the connection's reader task. It reads up to 64 KiB at
  once, feeds ``protocol.receive_data`` and drains *all* parsed frames into a local
  deque, so several messages that arrive in one read cost one syscall and one
  scheduler round trip. Pings are answered from the same call.
* ``send()`` frames the message and writes everything the protocol has queued with one
  write.
* On a plain TCP connection both go straight to the socket's file descriptor
  (``os.read``/``os.write``, and ``trio.lowlevel.wait_readable``/``wait_writable`` only
  when the kernel has nothing or is full). ``SocketStream.send_all``/``receive_some``
  cost two context managers and a scheduler round trip per call, several times the
  framing itself on this VM. TLS connections go through the ``SSLStream``.

Concurrency rule for the socket's write side (one writer task per connection, but the
reader must also write pongs and close replies, and the keepalive task writes pings):
writing is guarded by a "flush in progress" flag. Whoever holds it *drains*
``protocol.data_to_send()`` in a loop until it is empty, and only then lets go (with no
await between the last empty check and the release). So:

* the reader and the keepalive never wait: they queue their control frame in the
  protocol; if a flush is in progress they leave it to that flush, otherwise they write
  what the kernel takes now and leave any rest to the next flush;
* a ``send()`` that finds a flush in progress waits for it (backpressure: ``send()``
  returns once its frame is handed to the kernel) -- its frame goes out with that flush;
* bytes reach the socket in the order the protocol serialised them.

The uncontended path takes the flag without a checkpoint, which is why this is not a
``trio.Lock``: ``Lock.acquire`` costs a scheduler round trip even when free.

Every step is bounded: handshakes by ``handshake_timeout_s``, each flush by
``send_timeout_s`` (a send that runs out means a dead peer: the connection is aborted and
``TransportTimeout("send")`` raised), the closing handshake by ``close_timeout_s``, and
liveness by the keepalive ping (``ping_interval_s``/``ping_timeout_s``).
"""

from __future__ import annotations

import email.utils
import functools
import http
import logging
import os
import socket as stdlib_socket
import ssl
import struct
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import NoReturn

import attrs
import trio
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import (
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
)
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .._errors import (
    ConnectionClosed,
    FramingError,
    HandshakeError,
    HandshakeRejected,
    MessageTooBig,
    TransportError,
    TransportTimeout,
)
from .._version import __version__
from ._addr import format_peer
from ._admission import Admission, Pending, Refusal
from ._tcp import listener_addresses, open_tcp_listeners, serve_admitted, socket_of

__all__ = [
    "FRAMING_ERROR_KINDS",
    "HeadersLike",
    "WebSocketConnection",
    "WebSocketRequest",
    "adopt_websocket_server",
    "framing_error_kind",
    "open_websocket_client",
    "serve_websocket",
]

logger = logging.getLogger("bridge.transports")
# websockets' protocol objects log handshakes and protocol errors; keep them in our tree.
# Only its warnings: at INFO it writes "connection open", "connection closed" and
# "connection rejected (426 ...)" for every connection, a flood of lines for every bad
# peer outside the daemon's bad-peer budget (what a peer did wrong is reported by the
# owner, once, within it); at DEBUG it would log every frame of every call.
_protocol_logger = logging.getLogger("bridge.transports.websockets")
_protocol_logger.setLevel(logging.WARNING)

HeadersLike = Mapping[str, str] | Sequence[tuple[str, str]]

# One read takes whatever the kernel has, up to 64 KiB: at 160-byte audio frames that
# is hundreds of messages for one syscall when the reader falls behind.
RECEIVE_BYTES = 65536
# The opening handshake request is a few hundred bytes; 16 KiB leaves room for cookies
# and tokens and bounds what a slow or hostile client can make us buffer.
MAX_REQUEST_BYTES = 16384
# send() yields to the scheduler at least once per this many calls (fairness for a
# writer that sends in a loop while the socket keeps taking data).
_YIELD_EVERY = 64
# How much of a rejection body HandshakeRejected quotes.
_BODY_EXCERPT = 200

_OPEN = State.OPEN
_CLOSED = State.CLOSED
_BINARY = Opcode.BINARY
_TEXT = Opcode.TEXT
_CONT = Opcode.CONT
_PONG = Opcode.PONG

_USER_AGENT = f"bridge/{__version__}"


def _address(stream: trio.abc.Stream, *, peer: bool) -> tuple[str, int]:
    try:
        sock = socket_of(stream)
        name = sock.getpeername() if peer else sock.getsockname()
    except (TypeError, OSError):
        return ("", 0)
    return (str(name[0]), int(name[1]))


def _header_items(headers: HeadersLike) -> Sequence[tuple[str, str]]:
    if isinstance(headers, Mapping):
        return list(headers.items())
    return headers


def _add_headers(target: Headers, extra: HeadersLike) -> None:
    for name, value in _header_items(extra):
        try:
            target[name] = value
        except InvalidHandshake as exc:  # InvalidHeaderValue: CR/LF or other control bytes
            raise ValueError(f"invalid header {name!r}: {exc}") from None


def _coalesce(chunks: list[bytes]) -> list[bytes]:
    """Join consecutive frames into one write; keep SEND_EOF (b"") markers apart."""
    out: list[bytes] = []
    run: list[bytes] = []
    for chunk in chunks:
        if chunk:
            run.append(chunk)
            continue
        if run:
            out.append(b"".join(run))
            run = []
        out.append(chunk)
    if run:
        out.append(b"".join(run))
    return out


def _validate_close(code: int, reason: str) -> None:
    try:
        Close(code, reason).check()
    except Exception:
        # RFC 6455 §7.4: 1005, 1006 and 1015 must never be sent; 1016-2999 are reserved.
        raise ValueError(f"close code {code} may not be sent") from None
    # RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
    if len(reason.encode()) > 123:
        raise ValueError("close reason longer than 123 bytes")


#: The ``kind`` of every FramingError a connection can report (a bounded label set).
FRAMING_ERROR_KINDS = ("bad_frame", "invalid_utf8", "bad_close", "message_too_big")

# websockets' ProtocolError messages about a close frame (frames.Close.parse/check).
_BAD_CLOSE_MESSAGES = ("invalid status code", "close frame too short")


def framing_error_kind(exc: BaseException | None) -> str | None:
    """What a peer did wrong, from the exception the ``websockets`` parser stopped on
    (``protocol.parser_exc``); None when it was no fault of the peer's framing (EOF in
    the middle of a frame is a lost connection, not bad input).

    * ``message_too_big``: over ``max_message_bytes`` (RFC 6455 §7.4.1 1009);
    * ``bad_close``: a close frame with a reserved or invalid code, one byte long, or a
      reason that is not UTF-8 (§5.5.1, §7.4);
    * ``invalid_utf8``: a text message that is not UTF-8 (§8.1, 1007);
    * ``bad_frame``: everything else the framing forbids (unknown opcode, an unmasked
      client frame, reserved bits, a fragmented or oversize control frame, a
      continuation out of place: §5.2-§5.5, 1002).
    """
    if exc is None or isinstance(exc, EOFError):
        return None
    if isinstance(exc, PayloadTooBig):
        return "message_too_big"
    if isinstance(exc, UnicodeDecodeError):
        # The parser decodes only close reasons; text messages are decoded here.
        return "bad_close"
    if isinstance(exc, ProtocolError) and str(exc).startswith(_BAD_CLOSE_MESSAGES):
        return "bad_close"
    return "bad_frame"


@attrs.define(eq=False, repr=False)
class WebSocketConnection:
    """One open WebSocket connection (client or server side).

    Obtain one from :func:`open_websocket_client` or :meth:`WebSocketRequest.accept`.
    One task should call :meth:`receive` (the reader) and one :meth:`send` (the writer);
    concurrent senders are serialised in call order, a second concurrent receiver gets
    ``trio.BusyResourceError``. Keepalive pongs are only seen while someone is reading.
    """

    _stream: trio.abc.Stream = attrs.field(alias="stream")
    _protocol: Protocol = attrs.field(alias="protocol")
    send_timeout_s: float = 2.0
    close_timeout_s: float = 2.0
    ping_interval_s: float | None = None
    ping_timeout_s: float | None = None
    request: WebSocketRequest | None = None
    """The opening handshake request (server connections)."""
    response_headers: Headers | None = None
    """The headers of the server's 101 response (client connections)."""
    max_backlog_bytes: int = 4 << 20
    """Bound on what :meth:`send_nowait` may queue before the connection is failed."""

    remote: tuple[str, int] = attrs.field(init=False, default=("", 0))
    local: tuple[str, int] = attrs.field(init=False, default=("", 0))

    # Complete messages parsed but not yet returned by receive().
    _messages: deque[bytes | str] = attrs.field(init=False, factory=deque)
    # Reassembly of a fragmented message (RFC 6455 §5.4): opcode and parts so far.
    _frag_opcode: Opcode | None = attrs.field(init=False, default=None)
    _frag_parts: list[bytes] = attrs.field(init=False, factory=list)
    # Write side: see the module docstring.
    _flushing: bool = attrs.field(init=False, default=False)
    _flush_idle: trio.Event | None = attrs.field(init=False, default=None)
    _pending_writes: list[bytes] = attrs.field(init=False, factory=list)
    _eof_sent: bool = attrs.field(init=False, default=False)
    _sends_without_yield: int = attrs.field(init=False, default=0)
    # send_nowait(): wakes serve_writer() when a backlog builds up (or on close).
    _backlog_ready: trio.Event = attrs.field(init=False, factory=trio.Event)
    _doomed: bool = attrs.field(init=False, default=False)
    # A plain TCP stream is driven through its socket's fd (os.read/os.write and
    # trio.lowlevel.wait_*): SocketStream adds two context managers and a scheduler
    # round trip per call, more than the WebSocket framing costs. -1 for TLS.
    _sock: trio.socket.SocketType | None = attrs.field(init=False, default=None)
    _fd: int = attrs.field(init=False, default=-1)
    # Read side: a task is waiting for or reading data; others wait for it, not read.
    _reading: bool = attrs.field(init=False, default=False)
    _reader_idle: trio.Event | None = attrs.field(init=False, default=None)
    # Closing.
    _local_close: bool = attrs.field(init=False, default=False)
    _close_deadline: float | None = attrs.field(init=False, default=None)
    _stream_closed: bool = attrs.field(init=False, default=False)
    _abort_code: int | None = attrs.field(init=False, default=None)
    _abort_reason: str = attrs.field(init=False, default="")
    _too_big_reported: bool = attrs.field(init=False, default=False)
    # Invalid UTF-8 in a text message (found here, not by the protocol's parser).
    _utf8_error: str | None = attrs.field(init=False, default=None)
    #: Set by a reader in poll mode (``read_ready``): called when the connection
    #: closes, so that a reader waiting on the poller and not on the fd hears of it.
    poll_wake: Callable[[], None] | None = attrs.field(init=False, default=None)
    # Keepalive.
    _ping_payload: bytes | None = attrs.field(init=False, default=None)
    _pong_received: trio.Event | None = attrs.field(init=False, default=None)
    _ping_count: int = attrs.field(init=False, default=0)
    # Hand-off to another process (bridge.cluster): every byte read since
    # record_input(), so the adopting process can replay them into its own protocol.
    _recorded: bytearray | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        # Read once: getpeername() fails after the socket is closed.
        self.remote = _address(self._stream, peer=True)
        self.local = _address(self._stream, peer=False)
        if type(self._stream) is trio.SocketStream:
            self._sock = self._stream.socket
            self._fd = self._sock.fileno()

    def __repr__(self) -> str:
        side = self._protocol.side.name.lower()
        state = "closed" if self.closed else "open"
        return f"<WebSocketConnection {side} {state} local={self.local} remote={self.remote}>"

    # ----------------------------------------------------------------- properties

    @property
    def closed(self) -> bool:
        """True once a closing handshake has started (either side) or the socket is gone:
        ``send()`` raises; ``receive()`` may still return messages that arrived first."""
        return (
            self._stream_closed
            or self._local_close
            or self._doomed
            or self._protocol.state is not _OPEN
        )

    @property
    def close_code(self) -> int | None:
        """The close code: the peer's (RFC 6455 §7.1.5), else the local reason the
        connection ended (1006 lost, 1011 keepalive timeout); None while open."""
        if not self.closed:
            return None
        return self._close_info()[0]

    @property
    def close_reason(self) -> str | None:
        """The close reason matching :attr:`close_code`; None while open."""
        if not self.closed:
            return None
        return self._close_info()[1]

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol (``Sec-WebSocket-Protocol``), if any."""
        return self._protocol.subprotocol

    # ----------------------------------------------------------------- sending

    async def send(self, message: bytes | str) -> None:
        """Send one message: ``bytes`` as a binary frame, ``str`` as a text frame.

        Returns once the frame is handed to the kernel. Bounded by ``send_timeout_s``:
        on timeout the connection is aborted (a peer that stopped reading is dead for
        real-time media) and ``TransportTimeout("send")`` is raised. Raises
        ``ConnectionClosed`` once the connection is closing or closed.

        ``send()`` is always a cancellation point, but yields to the scheduler only
        when the socket is full or every ``_YIELD_EVERY`` calls: one ticker task can
        send a frame to hundreds of streams without a scheduler round trip for each.
        """
        if self._sends_without_yield < _YIELD_EVERY:
            self._sends_without_yield += 1
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            self._sends_without_yield = 0
            await trio.lowlevel.checkpoint()
        protocol = self._protocol
        if self._local_close or self._stream_closed or self._doomed or protocol.state is not _OPEN:
            raise self._closed_error(report_too_big=False)
        if isinstance(message, str):
            protocol.send_text(message.encode())
        else:
            protocol.send_binary(message)
        await self._flush(wait=True)

    async def _flush(self, *, wait: bool) -> None:
        """Write everything the protocol has queued.

        ``wait=False`` (reader, keepalive): if another task is flushing, return at once;
        that task drains our bytes before it lets go. ``wait=True`` (send, close): wait
        for it, so the caller's bytes are written when this returns.
        """
        if self._flushing:
            if not wait:
                return
            await self._wait_flush_idle()
        if self._stream_closed:
            raise self._closed_error(report_too_big=False)
        self._flushing = True
        try:
            # Fast path: the kernel takes it all now. No cancel scope (a deadline costs
            # more than the write) and no await. With wait=False (a pong, a ping) what
            # the kernel does not take now stays queued for the next flush: the reader
            # never blocks on a peer that does not read, and cancelling a receive()
            # cannot cut a frame in half.
            if self._fd >= 0 and (self._write_nowait() or not wait):
                self._release_flush()
                return
            # Slow path: the socket buffer is full (or TLS): wait, bounded.
            with trio.move_on_after(self.send_timeout_s) as scope:
                await self._drain()
        except BaseException as exc:
            # Cancelled, or the socket broke, part-way through a write: an unknown
            # prefix of a frame may be on the wire and the byte stream cannot be
            # resumed, so the connection is failed (RFC 6455 §7.1.7).
            self._release_flush()
            cancelled = isinstance(exc, trio.Cancelled)
            await self._abort(1006, "send cancelled" if cancelled else f"send failed: {exc!r}")
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
                raise self._closed_error(report_too_big=False) from exc
            raise
        self._release_flush()
        if scope.cancelled_caught:
            await self._abort(1006, "send timed out")
            raise TransportTimeout("send", self.send_timeout_s)

    # ----------------------------------------------------------------- non-blocking sends

    def send_nowait(self, message: bytes | str) -> None:
        """Queue one message without awaiting, for per-frame code that must not await.

        The frame goes straight to the kernel when it has room (the normal case);
        otherwise it joins a backlog that :meth:`serve_writer` flushes, in order with
        everything else (over TLS every frame goes through that backlog). Raises ``ConnectionClosed`` once the connection is closing or
        closed, or when the backlog would exceed ``max_backlog_bytes`` (the peer is not
        keeping up: the connection is failed).
        """
        protocol = self._protocol
        if self._local_close or self._stream_closed or self._doomed or protocol.state is not _OPEN:
            raise self._closed_error(report_too_big=False)
        if isinstance(message, str):
            protocol.send_text(message.encode())
        else:
            protocol.send_binary(message)
        if self._flushing:
            # The flush in progress drains this before it lets go; keep it in the
            # (counted, bounded) backlog meanwhile.
            self._pending_writes.extend(protocol.data_to_send())
        elif self._fd >= 0 and not self._pending_writes:
            self._flushing = True
            try:
                done = self._write_nowait()
            except OSError as exc:
                self._release_flush()
                self._fail_now(f"send failed: {exc}")
                raise self._closed_error(report_too_big=False) from exc
            self._release_flush()
            if done:
                return
        else:
            # A backlog exists (the kernel was full a moment ago) or TLS: queue behind it.
            self._pending_writes.extend(protocol.data_to_send())
        if self.backlog_bytes > self.max_backlog_bytes:
            self._fail_now(f"send backlog over {self.max_backlog_bytes} bytes")
            raise self._closed_error(report_too_big=False)
        if not self._flushing:
            self._backlog_ready.set()

    @property
    def backlog_bytes(self) -> int:
        """Bytes accepted by :meth:`send_nowait` that the kernel has not taken yet."""
        return sum(map(len, self._pending_writes))

    async def serve_writer(self, on_drained: Callable[[], None] | None = None) -> None:
        """Flush the :meth:`send_nowait` backlog whenever there is one, until the
        connection closes; run it in a task beside the reader.

        Each flush is bounded by ``send_timeout_s``: on timeout the connection is
        aborted and ``TransportTimeout("send")`` raised. ``on_drained()`` is called each
        time a backlog has been flushed. Returns when the connection closes normally;
        raises ``ConnectionClosed`` if it broke.
        """
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready = trio.Event()
            if self._doomed:
                await self._close_stream()
            if self._stream_closed:
                if self._abort_code is not None and self._protocol.close_rcvd is None:
                    raise self._closed_error(report_too_big=False)
                return
            await self._flush(wait=True)
            if on_drained is not None:
                on_drained()

    def _take_writes(self) -> list[bytes]:
        chunks = self._protocol.data_to_send()
        if self._pending_writes:
            chunks = self._pending_writes + chunks
            self._pending_writes = []
        if len(chunks) > 1:
            chunks = _coalesce(chunks)
        return chunks

    def _write_nowait(self) -> bool:
        """Write queued bytes straight to the socket without blocking. True if all went
        out; otherwise the rest waits at the front of ``_pending_writes``."""
        chunks = self._take_writes()
        fd = self._fd
        for index, chunk in enumerate(chunks):
            if not chunk:
                self._shutdown_write()
                continue
            try:
                written = os.write(fd, chunk)
            except BlockingIOError:
                written = 0
            if written < len(chunk):
                self._pending_writes[:0] = [chunk[written:], *chunks[index + 1 :]]
                return False
        return True

    async def _drain(self) -> None:
        while chunks := self._take_writes():
            for chunk in chunks:
                if not chunk:
                    await self._send_eof()
                elif self._sock is not None:
                    await self._write_socket(chunk)
                else:
                    await self._stream.send_all(chunk)

    async def _write_socket(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._stream_closed:  # never touch a closed (maybe reused) fd
                raise trio.ClosedResourceError("connection closed")
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                self._sends_without_yield = 0
                await trio.lowlevel.wait_writable(self._fd)

    def _shutdown_write(self) -> None:
        # websockets' SEND_EOF: the half-close that ends the closing handshake
        # (RFC 6455 §7.1.1, the server closes TCP first).
        if not self._eof_sent and self._sock is not None:
            self._eof_sent = True
            self._sock.shutdown(stdlib_socket.SHUT_WR)

    async def _send_eof(self) -> None:
        if self._sock is not None:
            self._shutdown_write()
        elif not self._eof_sent:
            self._eof_sent = True
            if isinstance(self._stream, trio.abc.HalfCloseableStream):
                await self._stream.send_eof()
            # TLS cannot half-close; the TCP close follows in _close_stream().

    def _release_flush(self) -> None:
        self._flushing = False
        event = self._flush_idle
        if event is not None:
            self._flush_idle = None
            event.set()

    async def _wait_flush_idle(self) -> None:
        with trio.move_on_after(self.send_timeout_s) as scope:
            while self._flushing:
                if self._flush_idle is None:
                    self._flush_idle = trio.Event()
                await self._flush_idle.wait()
        if scope.cancelled_caught:
            # The flush we queued behind is stuck: same verdict as our own timeout.
            await self._abort(1006, "send timed out")
            raise TransportTimeout("send", self.send_timeout_s)

    # ----------------------------------------------------------------- receiving

    async def receive(self) -> bytes | str:
        """The next complete message: ``bytes`` (binary frame) or ``str`` (text frame).

        Raises ``ConnectionClosed(code, reason)`` once the peer closed (after the
        closing handshake is answered and the socket closed), the socket died, or
        :meth:`close` was called. A peer that breaks the framing fails the connection
        (RFC 6455 §7.1.7: 1002, 1007, or 1009 for a message over ``max_message_bytes``)
        and ``receive()`` raises ``FramingError`` (``MessageTooBig`` for 1009) once, then
        ``ConnectionClosed``. Cancelling ``receive()`` loses nothing.

        Several messages from one socket read are returned without touching the
        scheduler again: ``receive()`` is always a cancellation point but yields to
        the scheduler once per socket read.
        """
        # Always a cancellation point; a schedule point only when the socket is read.
        await trio.lowlevel.checkpoint_if_cancelled()
        messages = self._messages
        if messages:
            return messages.popleft()
        while True:
            if self._local_close or self._stream_closed or self._protocol.state is not _OPEN:
                await self._finish_closing()
                raise self._closed_error(report_too_big=True)
            await self._read_once()
            if messages:
                return messages.popleft()

    async def _receive_bytes(self) -> bytes | bytearray:
        sock_fd = self._fd
        if sock_fd < 0:
            return await self._stream.receive_some(RECEIVE_BYTES)
        while True:
            # Wait first, then read. With paced traffic (one frame per 20 ms) a
            # speculative read fails with EAGAIN nearly every time: a wasted syscall per
            # frame. Waiting also yields, so a flooding peer cannot starve other tasks.
            await trio.lowlevel.wait_readable(sock_fd)
            if self._stream_closed:  # closed while we waited to be scheduled
                raise trio.ClosedResourceError("connection closed")
            try:
                return os.read(sock_fd, RECEIVE_BYTES)
            except BlockingIOError:
                continue

    def fileno(self) -> int:
        """The socket's fd, for a read poller (-1 for TLS, or once closed)."""
        return -1 if self._stream_closed else self._fd

    def read_ready(self) -> list[bytes | str] | None:
        """Poll mode (see ``transports.Poller``): one non-blocking read, parsed.

        Returns the complete messages it finished (``[]`` if there was nothing to
        read), answering pings on the way exactly as ``receive()`` does. Returns None
        whenever ``receive()`` must take over: messages already queued, another task
        reading, EOF, an error, a close frame, closing, an oversize message. Nothing is
        lost either way: what was read stays queued for ``receive()``.
        """
        protocol = self._protocol
        if (
            self._messages
            or self._reading
            or self._local_close
            or self._stream_closed
            or self._fd < 0
            or protocol.state is not _OPEN
        ):
            return None
        try:
            data = os.read(self._fd, RECEIVE_BYTES)
        except BlockingIOError:
            return []
        except OSError:
            return None  # a reset: the next read sees EOF, and receive() reports it
        if not data:
            return None  # EOF is sticky: receive() reads it again and closes
        if self._recorded is not None:
            self._recorded += data
        protocol.receive_data(data)
        self._process_events(protocol.events_received())
        writes = protocol.data_to_send()
        if writes:
            # A pong (RFC 6455 §5.5.2) or a close reply: written now without blocking,
            # as the reader's _flush(wait=False) does; if a flush is under way, that
            # task drains these before it lets go.
            self._pending_writes.extend(writes)
            if not self._flushing and not self._stream_closed:
                try:
                    self._write_nowait()
                except OSError as exc:
                    self._fail_now(f"connection lost: {exc}")
        if self._stream_closed or protocol.state is not _OPEN:
            return None
        messages = self._messages
        if not messages:
            return []
        out = list(messages)
        messages.clear()
        return out

    async def _read_once(self) -> None:
        """One socket read: parse, queue messages, answer control frames."""
        self._reading = True
        try:
            data = await self._receive_bytes()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # ClosedResourceError: another task closed the socket (abort, close timeout).
            # BrokenResourceError/OSError: reset by the peer, or TLS truncated.
            self._release_reader()
            if not self._stream_closed and self._protocol.close_rcvd is None:
                self._set_abort(1006, f"connection lost: {exc.__cause__ or exc}")
            await self._close_stream()
            return
        except BaseException:
            self._release_reader()
            raise
        self._release_reader()
        if self._stream_closed:
            return  # closed while we were being scheduled; the data is moot
        protocol = self._protocol
        if data:
            if self._recorded is not None:
                self._recorded += data
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        self._process_events(protocol.events_received())
        writes = protocol.data_to_send()
        if writes:
            # Pongs (RFC 6455 §5.5.2), close replies (§5.5.1), EOF: never wait for the
            # writer; if it is flushing, it picks these up before it lets go.
            self._pending_writes.extend(writes)
            try:
                await self._flush(wait=False)
            except TransportError:
                pass  # the connection is aborted; the caller sees it closed

    def _release_reader(self) -> None:
        self._reading = False
        event = self._reader_idle
        if event is not None:
            self._reader_idle = None
            event.set()

    def _process_events(self, events: Sequence[object]) -> None:
        append = self._messages.append
        drop_data = self._local_close  # after our close() nobody reads messages any more
        for frame in events:
            if type(frame) is not Frame:
                continue  # Request/Response: only during the opening handshake
            opcode = frame.opcode
            if frame.fin and self._frag_opcode is None:
                if opcode is _BINARY:
                    if not drop_data:
                        data = frame.data
                        append(data if type(data) is bytes else bytes(data))
                    continue
                if opcode is _TEXT:
                    if not drop_data:
                        try:
                            append(str(frame.data, "utf-8"))
                        except UnicodeDecodeError as exc:
                            self._fail_invalid_utf8(exc)
                            return
                    continue
            if opcode is _BINARY or opcode is _TEXT:
                # First fragment (RFC 6455 §5.4); the protocol enforces max_size across
                # all fragments of a message.
                self._frag_opcode = opcode
                self._frag_parts = [bytes(frame.data)]
            elif opcode is _CONT:
                self._frag_parts.append(bytes(frame.data))
                if frame.fin:
                    payload = b"".join(self._frag_parts)
                    first = self._frag_opcode
                    self._frag_opcode = None
                    self._frag_parts = []
                    if drop_data:
                        continue
                    if first is _TEXT:
                        try:
                            append(payload.decode())
                        except UnicodeDecodeError as exc:
                            self._fail_invalid_utf8(exc)
                            return
                    else:
                        append(payload)
            elif (
                opcode is _PONG
                and self._pong_received is not None
                and frame.data == self._ping_payload
            ):
                # RFC 6455 §5.5.3: a pong echoes its ping's payload; unsolicited or
                # stale pongs are ignored.
                self._pong_received.set()
            # PING: the protocol already queued the pong. CLOSE: it queued the echo
            # (RFC 6455 §5.5.1) and moved to CLOSING; receive() finishes the handshake.

    def _fail_invalid_utf8(self, exc: UnicodeDecodeError) -> None:
        # RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection with 1007.
        self._utf8_error = f"invalid UTF-8 in a text message: {exc.reason} at position {exc.start}"
        self._protocol.fail(1007, f"{exc.reason} at position {exc.start}")

    @property
    def framing_error(self) -> FramingError | None:
        """How the peer broke the framing, if it did (see :func:`framing_error_kind`);
        ``receive()`` raises it once."""
        if self._utf8_error is not None:
            return FramingError(self._utf8_error, "invalid_utf8")
        exc = self._protocol.parser_exc
        kind = framing_error_kind(exc)
        if kind is None:
            return None
        if kind == "message_too_big":
            return MessageTooBig(str(exc))
        return FramingError(f"{exc}" or type(exc).__name__, kind)

    # ----------------------------------------------------------------- hand-off

    def record_input(self) -> None:
        """Keep a copy of every byte read from now on (bounded by what a handshake may
        read), for :meth:`detach`. Call it right after ``accept()``, before any receive."""
        if self._recorded is None:
            self._recorded = bytearray()

    def stop_recording(self) -> None:
        """Stop :meth:`record_input` (the connection stays here) and drop the copy."""
        self._recorded = None

    async def detach(self) -> tuple[trio.socket.SocketType, bytes]:
        """Give the connection up *without* a closing handshake, so that another process
        can continue it (``bridge.cluster``): returns a duplicate of the socket and the
        bytes read since :meth:`record_input` (replay them into the adopting side's
        protocol, see :func:`adopt_websocket_server`). This object then counts as closed
        (its own descriptor is closed; the TCP connection lives on in the duplicate).

        Only for a plain TCP connection that nobody is reading from or writing to.
        """
        if self._sock is None or self._stream_closed or self._recorded is None:
            raise RuntimeError("only an open, recorded plain TCP connection can be detached")
        if self._reading or self._flushing:
            raise RuntimeError("detach() while another task reads or writes")
        if self._pending_writes or self._protocol.data_to_send():
            # A pong still queued: hand the kernel what we owe the peer first.
            self._pending_writes.extend(self._protocol.data_to_send())
            await self._flush(wait=True)
        sock = self._sock.dup()
        recorded = bytes(self._recorded)
        self._recorded = None
        self._set_abort(1006, "handed over to another process")
        self._local_close = True
        self._messages.clear()
        await self._close_stream()
        return sock, recorded

    # ----------------------------------------------------------------- closing

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close: send a close frame, wait for the peer's (bounded by
        ``close_timeout_s``), then close the TCP connection.

        Idempotent; never raises for a connection that is already broken. A task
        blocked in :meth:`receive` gets ``ConnectionClosed``; messages not yet received
        are dropped. If cancelled, the socket is closed at once.
        """
        if not self._local_close:
            _validate_close(code, reason)
            self._local_close = True
            self._messages.clear()
            if self._protocol.state is _OPEN and not self._stream_closed:
                self._close_deadline = trio.current_time() + self.close_timeout_s
                # RFC 6455 §7.1.2: start the closing handshake.
                self._protocol.send_close(code, reason)
        await self._finish_closing()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Alias of :meth:`close` (the ``trio.abc.AsyncResource`` spelling)."""
        await self.close(code, reason)

    async def _finish_closing(self) -> None:
        """Complete the closing handshake (RFC 6455 §7.1.2-§7.1.4), then close TCP.

        Bounded by ``close_timeout_s`` from when closing began. If another task is
        reading, it does the reading and this task waits; otherwise this task reads.
        """
        if self._stream_closed:
            return
        if self._close_deadline is None:
            self._close_deadline = trio.current_time() + self.close_timeout_s
        try:
            with trio.move_on_at(self._close_deadline):
                await self._flush(wait=True)
                # The server closes TCP once both close frames are exchanged; the
                # client waits for that EOF (RFC 6455 §7.1.1). websockets' protocol
                # reaches CLOSED exactly when the TCP side is done.
                while self._protocol.state is not _CLOSED and not self._stream_closed:
                    if self._reading:
                        if self._reader_idle is None:
                            self._reader_idle = trio.Event()
                        await self._reader_idle.wait()
                    else:
                        await self._read_once()
                if not self._stream_closed:
                    await self._flush(wait=True)  # the client's own EOF, if queued
        except TransportError:
            pass  # aborted on the way; nothing more to say to the peer
        finally:
            await self._close_stream()

    def _set_abort(self, code: int, reason: str) -> None:
        if self._abort_code is None:
            self._abort_code = code
            self._abort_reason = reason

    async def _abort(self, code: int, reason: str) -> None:
        """Close the socket now, recording why (for close_code and ConnectionClosed)."""
        if not self._stream_closed:
            self._set_abort(code, reason)
        await self._close_stream()

    def _mark_closed(self) -> bool:
        """Bookkeeping of the TCP close; True if the closing handshake was clean."""
        self._stream_closed = True
        protocol = self._protocol
        clean = protocol.state is _CLOSED
        # receive_eof() is idempotent and moves the protocol to CLOSED.
        protocol.receive_eof()
        protocol.events_received()
        protocol.data_to_send()
        self._pending_writes = []
        self._release_flush()
        self._backlog_ready.set()  # serve_writer() ends
        if self.poll_wake is not None:
            self.poll_wake()
        return clean

    def _fail_now(self, reason: str) -> None:
        """Abort from synchronous code (send_nowait): a plain socket closes now; a TLS
        stream is closed by serve_writer(), which this wakes."""
        self._set_abort(1006, reason)
        if self._sock is not None and not self._stream_closed:
            self._mark_closed()
            self._sock.close()  # trio's close notifies tasks waiting on the fd
        else:
            self._doomed = True
            self._backlog_ready.set()

    async def _close_stream(self) -> None:
        if self._stream_closed:
            return
        clean = self._mark_closed()
        stream = self._stream
        try:
            if clean and isinstance(stream, trio.SSLStream):
                # Polite TLS close_notify after a clean closing handshake, bounded.
                with trio.move_on_after(self.close_timeout_s):
                    await stream.aclose()
        finally:
            await trio.aclose_forcefully(stream)

    def _close_info(self) -> tuple[int, str]:
        protocol = self._protocol
        if protocol.close_rcvd is not None:
            return protocol.close_rcvd.code, protocol.close_rcvd.reason
        if self._abort_code is not None:
            return self._abort_code, self._abort_reason
        if protocol.close_sent is not None:
            return protocol.close_sent.code, protocol.close_sent.reason
        # RFC 6455 §7.1.5: 1006 when the connection closed without a close frame.
        return 1006, "connection lost"

    def _closed_error(self, *, report_too_big: bool) -> TransportError:
        # report_too_big: receive() reports the peer's framing error (an oversize
        # message or any other) once, as bad input, before plain ConnectionClosed.
        if report_too_big and not self._too_big_reported:
            error = self.framing_error
            if error is not None:
                self._too_big_reported = True
                return error
        code, reason = self._close_info()
        return ConnectionClosed(code, reason)

    # ----------------------------------------------------------------- keepalive

    async def _keepalive(self) -> None:
        """Ping every ``ping_interval_s``; no pong within ``ping_timeout_s`` aborts the
        connection with 1011 (RFC 6455 §5.5.2: pings as a keepalive)."""
        interval = self.ping_interval_s
        if interval is None:
            return
        while True:
            await trio.sleep(interval)
            if self.closed:
                return
            self._ping_count += 1
            payload = struct.pack("!I", self._ping_count & 0xFFFFFFFF)
            pong = trio.Event()
            self._ping_payload = payload
            self._pong_received = pong
            self._protocol.send_ping(payload)
            try:
                await self._flush(wait=False)
            except TransportError:
                return
            if self.ping_timeout_s is None:
                continue
            with trio.move_on_after(self.ping_timeout_s):
                await pong.wait()
            if pong.is_set():
                continue
            if self._local_close or self._stream_closed or self._protocol.state is not _OPEN:
                return  # a closing handshake is under way, with its own timeout
            logger.info("websocket %s: no pong within %gs, aborting", self.remote, self.ping_timeout_s)
            await self._abort(1011, "keepalive ping timeout")
            return

    def _absorb(self, events: Sequence[object]) -> None:
        """Frames that arrived with the handshake response, and their replies."""
        self._process_events(events)
        self._pending_writes.extend(self._protocol.data_to_send())


# =============================================================================== client


def _client_ssl_context(ssl_context: ssl.SSLContext | None, ca_file: str | None) -> ssl.SSLContext:
    if ssl_context is not None:
        if ca_file is not None:
            raise ValueError("pass ssl_context or ca_file, not both")
        return ssl_context
    # System CA store (or ca_file), hostname verification and SNI on.
    return ssl.create_default_context(cafile=ca_file)


async def _read_response(
    stream: trio.abc.Stream, protocol: ClientProtocol
) -> tuple[Response, list[object]]:
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        for index, event in enumerate(events):
            if isinstance(event, Response):
                return event, list(events[index + 1 :])
        if protocol.handshake_exc is not None:
            raise HandshakeError(f"invalid handshake response: {protocol.handshake_exc}")
        if not data:
            raise HandshakeError("connection closed during the opening handshake")


async def _connect(
    url: str,
    *,
    headers: HeadersLike,
    subprotocols: Sequence[str],
    handshake_timeout_s: float,
    send_timeout_s: float,
    ping_interval_s: float | None,
    ping_timeout_s: float | None,
    close_timeout_s: float,
    max_message_bytes: int | None,
    ssl_context: ssl.SSLContext | None,
    ca_file: str | None,
    local_address: str | None = None,
) -> WebSocketConnection:
    try:
        uri = parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(str(exc)) from None
    context = _client_ssl_context(ssl_context, ca_file) if uri.secure else None
    protocol = ClientProtocol(
        uri,
        subprotocols=[Subprotocol(s) for s in subprotocols] or None,
        max_size=max_message_bytes,
        logger=_protocol_logger,
    )
    request = protocol.connect()
    extra = _header_items(headers)
    if not any(name.lower() == "user-agent" for name, _ in extra):
        request.headers["User-Agent"] = _USER_AGENT
    _add_headers(request.headers, extra)
    where = f"{uri.host}:{uri.port}"

    stream: trio.abc.Stream | None = None
    step = "connect"
    try:
        with trio.move_on_after(handshake_timeout_s) as scope:
            try:
                stream = await trio.open_tcp_stream(
                    uri.host, uri.port, local_address=local_address
                )
                if context is not None:
                    step = "TLS handshake"
                    # server_hostname: SNI, and the certificate must match the host.
                    tls = trio.SSLStream(stream, context, server_hostname=uri.host)
                    stream = tls
                    await tls.do_handshake()
                step = "upgrade"
                protocol.send_request(request)
                # RFC 6455 §4.1: send the upgrade request, then wait for the 101.
                await stream.send_all(b"".join(protocol.data_to_send()))
                response, leftover = await _read_response(stream, protocol)
            except (OSError, trio.BrokenResourceError) as exc:
                cause = exc.__cause__ or exc
                raise HandshakeError(f"{step} to {where} failed: {cause}") from exc
        if scope.cancelled_caught:
            raise TransportTimeout("handshake", handshake_timeout_s)
        failure = protocol.handshake_exc
        if isinstance(failure, InvalidStatus):
            status = failure.response.status_code
            body = bytes(failure.response.body[:_BODY_EXCERPT]).decode("utf-8", "replace")
            raise HandshakeRejected(status, body.strip())
        if failure is not None:
            raise HandshakeError(f"upgrade to {where} failed: {failure}") from failure
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise
    assert stream is not None
    connection = WebSocketConnection(
        stream,
        protocol,
        send_timeout_s=send_timeout_s,
        close_timeout_s=close_timeout_s,
        ping_interval_s=ping_interval_s,
        ping_timeout_s=ping_timeout_s,
        response_headers=response.headers,
    )
    if leftover:
        connection._absorb(leftover)
    return connection


@asynccontextmanager
async def open_websocket_client(
    url: str,
    *,
    headers: HeadersLike = (),
    subprotocols: Sequence[str] = (),
    handshake_timeout_s: float = 5.0,
    send_timeout_s: float = 2.0,
    ping_interval_s: float | None = 10.0,
    ping_timeout_s: float | None = 10.0,
    close_timeout_s: float = 2.0,
    max_message_bytes: int | None = 1 << 20,
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | None = None,
    local_address: str | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """Connect to ``url`` (``ws://`` or ``wss://``) and yield the open connection.

    TCP connect, TLS and the HTTP upgrade are together bounded by
    ``handshake_timeout_s`` (``TransportTimeout("handshake")``). A non-101 answer raises
    ``HandshakeRejected(status)``; a refused connection, DNS or TLS failure
    ``HandshakeError``; a malformed URL ``ValueError``. ``wss://`` verifies the server
    certificate and hostname against the system CA store, or ``ca_file``, or uses
    ``ssl_context`` as given. ``local_address`` binds the client socket to one of this
    host's addresses (a multi-homed host; tests posing as several peers on 127/8).

    On exit the connection is closed (1000, or 1011 if the body raised), bounded by
    ``close_timeout_s``, and the keepalive task stops. If the body is cancelled the
    socket is closed without a closing handshake.
    """
    connection = await _connect(
        url,
        headers=headers,
        subprotocols=subprotocols,
        handshake_timeout_s=handshake_timeout_s,
        send_timeout_s=send_timeout_s,
        ping_interval_s=ping_interval_s,
        ping_timeout_s=ping_timeout_s,
        close_timeout_s=close_timeout_s,
        max_message_bytes=max_message_bytes,
        ssl_context=ssl_context,
        ca_file=ca_file,
        local_address=local_address,
    )
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            if ping_interval_s is not None:
                nursery.start_soon(connection._keepalive)
            try:
                yield connection
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller sees its own
                # exception and not an ExceptionGroup wrapping it.
                body_error = exc
            try:
                await connection.close(1000 if body_error is None else 1011)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await connection._close_stream()
    if body_error is not None:
        raise body_error


@asynccontextmanager
async def adopt_websocket_server(
    sock: trio.socket.SocketType,
    received: bytes = b"",
    *,
    remote: tuple[str, int] | None = None,
    request: WebSocketRequest | None = None,
    send_timeout_s: float = 2.0,
    close_timeout_s: float = 2.0,
    ping_interval_s: float | None = None,
    ping_timeout_s: float | None = None,
    max_message_bytes: int | None = 1 << 20,
) -> AsyncIterator[WebSocketConnection]:
    """Continue, in this process, a server-side WebSocket connection whose opening
    handshake another process completed (``WebSocketConnection.detach`` there).

    ``sock`` is the connected socket (received over ``SCM_RIGHTS``, or a relay's TCP
    connection that carries the peer's bytes unchanged); ``received`` the bytes the other
    process read after its 101 answer, parsed here again as if they had just arrived;
    ``remote`` the original peer's address (logs and metrics keep it through a relay).
    Yields the open connection; on exit closes it as :func:`open_websocket_client`
    does (1000, or 1011 if the body raised).
    """
    protocol = ServerProtocol(
        state=State.OPEN, max_size=max_message_bytes, logger=_protocol_logger
    )
    connection = WebSocketConnection(
        trio.SocketStream(sock),
        protocol,
        send_timeout_s=send_timeout_s,
        close_timeout_s=close_timeout_s,
        ping_interval_s=ping_interval_s,
        ping_timeout_s=ping_timeout_s,
        request=request,
    )
    if remote is not None:
        connection.remote = remote
    if received:
        protocol.receive_data(received)
        connection._absorb(protocol.events_received())
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            if ping_interval_s is not None:
                nursery.start_soon(connection._keepalive)
            try:
                yield connection
            except BaseException as exc:
                body_error = exc
            try:
                if not connection.closed:
                    await connection.close(1000 if body_error is None else 1011)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await connection._close_stream()
    if body_error is not None:
        raise body_error


# =============================================================================== server


@attrs.define(eq=False)
class _ServerConfig:
    handler: Callable[[WebSocketRequest], Awaitable[object]]
    handshake_timeout_s: float
    max_handshakes: int
    max_message_bytes: int | None
    send_timeout_s: float
    ping_interval_s: float | None
    ping_timeout_s: float | None
    close_timeout_s: float
    ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None
    #: Called with (peer "host:port", kind, what was wrong) for every connection that
    #: sent something and never became a WebSocket, so the owner can log and count bad
    #: peers; kind is ``bad_handshake`` or ``handshake_timeout``. None = a debug line.
    on_bad_handshake: Callable[[str, str, str], None] | None = None
    #: The TLS handshake's own deadline (None: it shares ``handshake_timeout_s``).
    tls_handshake_timeout_s: float | None = None
    #: Called with (peer, kind, why) for a TLS handshake that failed (kind
    #: ``tls_handshake_failed``) or ran out of time (``tls_handshake_timeout``); None:
    #: ``on_bad_handshake`` with that kind.
    on_tls_error: Callable[[str, str, str], None] | None = None


@attrs.define(eq=False, repr=False)
class WebSocketRequest:
    """An opening-handshake request, handed to the server's handler.

    The handler answers it exactly once, with :meth:`accept` or :meth:`reject`; if it
    returns without answering, the server rejects with 500.
    """

    path: str
    """Request path without the query string."""
    target: str
    """The request-target exactly as sent (path and query, still percent-encoded):
    what a signature over the URL covers."""
    query: dict[str, str]
    """Parsed query string (the last value wins for a repeated name)."""
    headers: Headers
    """Request headers (case-insensitive; ``get_all`` for repeated names)."""
    remote: tuple[str, int]
    """The client's (host, port), as accept(2) reported it."""
    deadline: float
    """When the handshake runs out (Trio clock): ``handshake_timeout_s`` after the TCP
    accept. A handler that waits for a first message after :meth:`accept` (with
    ``keep_pending=True``) should wait no longer."""
    subprotocols: tuple[str, ...]
    """Subprotocols the client offered (``Sec-WebSocket-Protocol``), in its order."""
    _stream: trio.abc.Stream = attrs.field(alias="stream")
    _protocol: ServerProtocol = attrs.field(alias="protocol")
    _response: Response = attrs.field(alias="response")
    _config: _ServerConfig = attrs.field(alias="config")
    _nursery: trio.Nursery = attrs.field(alias="nursery")
    _pending: Pending = attrs.field(alias="pending")
    connection: WebSocketConnection | None = attrs.field(init=False, default=None)
    """The connection, once accepted."""
    answered: bool = attrs.field(init=False, default=False)
    """True once accept() or reject() was called."""

    def __repr__(self) -> str:
        return f"<WebSocketRequest {self.path!r} from {self.remote}>"

    def _answer(self, *, keep_pending: bool = False) -> None:
        if self.answered:
            raise RuntimeError("this request was already accepted or rejected")
        self.answered = True
        if not keep_pending:
            self._pending.release()

    def release_pending(self) -> None:
        """The connection has proved itself: it no longer counts against the server's
        pending limits (``max_handshakes``, ``max_handshakes_per_peer``). Idempotent;
        done by :meth:`accept` unless ``keep_pending``, and when the handler returns."""
        self._pending.release()

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: HeadersLike = (),
        *,
        keep_pending: bool = False,
    ) -> WebSocketConnection:
        """Answer 101 and return the open connection.

        ``subprotocol`` must be one the client offered (RFC 6455 §4.2.2). The
        connection is closed when the handler returns. ``keep_pending``: the connection
        still counts as a handshake in progress until :meth:`release_pending` (a
        carrier stream is only a call once its ``start`` message came).
        """
        if self.answered:
            raise RuntimeError("this request was already accepted or rejected")
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise ValueError(f"the client did not offer subprotocol {subprotocol!r}")
        response = self._response
        _add_headers(response.headers, headers)
        if subprotocol is not None:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        self._answer(keep_pending=keep_pending)
        protocol = self._protocol
        protocol.send_response(response)  # state -> OPEN
        protocol.subprotocol = Subprotocol(subprotocol) if subprotocol is not None else None
        config = self._config
        connection = WebSocketConnection(
            self._stream,
            protocol,
            send_timeout_s=config.send_timeout_s,
            close_timeout_s=config.close_timeout_s,
            ping_interval_s=config.ping_interval_s,
            ping_timeout_s=config.ping_timeout_s,
            request=self,
        )
        self.connection = connection
        await connection._flush(wait=True)
        if config.ping_interval_s is not None:
            self._nursery.start_soon(connection._keepalive)
        return connection

    async def reject(
        self, status: int, body: str | bytes = b"", headers: HeadersLike = ()
    ) -> None:
        """Answer with an HTTP error (e.g. 401, 404, 503) and close the connection.

        ``body`` is sent as is (``str`` as UTF-8); set ``Content-Type`` in ``headers``
        (default ``text/plain; charset=utf-8``).
        """
        if not 300 <= status <= 599:
            raise ValueError(f"a rejection needs a 3xx-5xx status, not {status}")
        self._answer()
        await _send_rejection(self._stream, self._protocol, self._config, status, body, headers)


def _rejection(status: int, body: str | bytes, headers: HeadersLike) -> Response:
    payload = body.encode() if isinstance(body, str) else bytes(body)
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    response_headers = Headers()
    response_headers["Date"] = email.utils.formatdate(usegmt=True)
    _add_headers(response_headers, headers)
    if "Content-Type" not in response_headers:
        response_headers["Content-Type"] = "text/plain; charset=utf-8"
    for name in ("Content-Length", "Connection"):
        if name in response_headers:
            del response_headers[name]
    response_headers["Content-Length"] = str(len(payload))
    response_headers["Connection"] = "close"
    return Response(status, phrase, response_headers, payload)


async def _send_rejection(
    stream: trio.abc.Stream,
    protocol: ServerProtocol,
    config: _ServerConfig,
    status: int,
    body: str | bytes,
    headers: HeadersLike,
) -> None:
    # send_response() of a non-101 queues the response and an EOF (half-close).
    protocol.send_response(_rejection(status, body, headers))
    with trio.move_on_after(config.send_timeout_s):
        try:
            for chunk in protocol.data_to_send():
                if chunk:
                    await stream.send_all(chunk)
                elif isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionClosed(1006, "client went away before the answer") from exc


_BUSY_BODY = b"too many handshakes in progress\n"
_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_BUSY_BODY)
) + _BUSY_BODY


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read and discard what the client still sends, until its EOF.

    After an error answer to a request we did not read in full: closing a socket with
    unread data makes the kernel send RST, which can destroy the answer before the
    client reads it. The caller bounds the time; this bounds the bytes.
    """
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    drained = 0
    while drained < 4 * MAX_REQUEST_BYTES:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return
        drained += len(data)


async def _refuse_busy(config: _ServerConfig, stream: trio.SocketStream) -> None:
    """Over ``max_handshakes`` in all: a canned 503 without parsing anything (the
    accept loop runs a bounded number of these; per-peer refusals get none)."""
    if config.ssl_context is not None:
        return  # TLS: a TLS handshake is not cheap; just drop the TCP connection
    with trio.move_on_after(min(config.handshake_timeout_s, 1.0)):
        await stream.send_all(_SERVICE_UNAVAILABLE)
        await _linger(stream)


async def _read_request(
    stream: trio.abc.Stream, protocol: ServerProtocol, received: list[int]
) -> Request | None:
    """Read and parse the upgrade request; None if the client failed to send one (a
    parse error may have queued a 4xx answer in the protocol). ``received[0]`` counts
    the bytes read."""
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            protocol.receive_eof()
            return None
        received[0] += len(data)
        if received[0] > MAX_REQUEST_BYTES:
            protocol.send_response(_rejection(431, "Request header fields too large\n", ()))
            return None
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Request):
                return event
        if protocol.handshake_exc is not None:
            return None


async def _send_chunks(stream: trio.abc.Stream, chunks: list[bytes]) -> None:
    """Write what the protocol queued (an error response); EOF is left to the caller."""
    for chunk in chunks:
        if chunk:
            await stream.send_all(chunk)


async def _serve_connection(
    config: _ServerConfig,
    tcp_stream: trio.SocketStream,
    remote: tuple[str, int],
    pending: Pending,
) -> None:
    """One admitted TCP connection, from handshake to close. Never raises: an exception
    here would stop the accept loop and with it the whole server."""
    stream: trio.abc.Stream = tcp_stream
    deadline = trio.current_time() + config.handshake_timeout_s
    try:
        protocol = ServerProtocol(max_size=config.max_message_bytes, logger=_protocol_logger)
        request: Request | None = None
        queued: list[bytes] = []
        received = [0]
        if config.ssl_context is not None:
            tls = await _tls_handshake(config, tcp_stream, remote)
            if tls is None:
                return
            stream = tls
        with trio.move_on_at(deadline) as handshake_scope:
            try:
                request = await _read_request(stream, protocol, received)
                queued = protocol.data_to_send() if request is None else []
                if any(queued):
                    # The 4xx the parser queued (request line or headers too long).
                    await _send_chunks(stream, queued)
                    await _linger(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if received[0] or request is not None:
                    _bad_handshake(
                        config,
                        remote,
                        "bad_handshake",
                        f"connection lost during the handshake after {received[0]} bytes: "
                        f"{exc.__cause__ or exc}",
                    )
                else:
                    _nothing_sent(remote, f"reset before sending anything: {exc.__cause__ or exc}")
                return
        if request is None:
            # Slowloris, garbage, or the client went away: drop without ceremony.
            if handshake_scope.cancelled_caught and not any(queued):
                _bad_handshake(
                    config,
                    remote,
                    "handshake_timeout",
                    f"no complete upgrade request within {config.handshake_timeout_s:g}s "
                    f"({received[0]} bytes received)",
                )
            elif any(queued):
                _bad_handshake(config, remote, "bad_handshake", "malformed HTTP request (answered 4xx)")
            elif received[0]:
                _bad_handshake(
                    config,
                    remote,
                    "bad_handshake",
                    f"not an HTTP upgrade request ({received[0]} bytes, then closed)",
                )
            else:
                _nothing_sent(remote, "closed without sending anything")
            return
        response = protocol.accept(request)
        if response.status_code != 101:
            # Not a valid WebSocket upgrade (RFC 6455 §4.2.1): 400, 405, 426...
            _bad_handshake(
                config,
                remote,
                "bad_handshake",
                f"not a WebSocket upgrade (HTTP {response.status_code})",
            )
            pending.release()
            protocol.send_response(response)
            with trio.move_on_after(config.send_timeout_s):
                await _send_chunks(stream, protocol.data_to_send())
            return
        path, _, raw_query = request.path.partition("?")
        offered: list[str] = []
        for value in request.headers.get_all("Sec-WebSocket-Protocol"):
            offered.extend(s.strip() for s in value.split(",") if s.strip())
        async with trio.open_nursery() as nursery:
            ws_request = WebSocketRequest(
                path=path,
                target=request.path,
                query=dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True)),
                headers=request.headers,
                remote=remote,
                deadline=deadline,
                subprotocols=tuple(offered),
                stream=stream,
                protocol=protocol,
                response=response,
                config=config,
                nursery=nursery,
                pending=pending,
            )
            try:
                await _run_handler(config, ws_request)
            finally:
                # Stops the keepalive; nothing else runs in here.
                nursery.cancel_scope.cancel()
    except (TransportError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        logger.debug("websocket connection from %s ended: %r", format_peer(remote), exc)
    except Exception:
        logger.exception("websocket server: internal error on a connection")
    finally:
        pending.release()
        await trio.aclose_forcefully(stream)


async def _tls_handshake(
    config: _ServerConfig, tcp_stream: trio.SocketStream, remote: tuple[str, int]
) -> trio.SSLStream[trio.SocketStream] | None:
    """The server side of the TLS handshake, bounded; None (reported) if it failed.

    The context is looked up per connection, so a reloaded certificate (SIGHUP) serves
    every handshake from then on while live connections keep theirs. A peer that opens
    TCP and never finishes the handshake holds its pending slot until
    ``tls_handshake_timeout_s``, then is dropped and reported.
    """
    source = config.ssl_context
    assert source is not None
    context = source if isinstance(source, ssl.SSLContext) else source()
    tls = trio.SSLStream(tcp_stream, context, server_side=True)
    deadline_s = config.tls_handshake_timeout_s or config.handshake_timeout_s
    with trio.move_on_after(deadline_s) as scope:
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # Plain HTTP on the TLS port, no shared version or cipher, a client that
            # rejects our certificate, or a TCP connect-and-close (a port probe).
            cause = exc.__cause__ or exc
            _tls_failed(config, remote, "tls_handshake_failed", f"TLS handshake failed: {cause}")
            return None
    if scope.cancelled_caught:
        _tls_failed(
            config, remote, "tls_handshake_timeout", f"no TLS handshake within {deadline_s:g}s"
        )
        return None
    return tls


def _tls_failed(config: _ServerConfig, remote: tuple[str, int], kind: str, why: str) -> None:
    if config.on_tls_error is None:
        _bad_handshake(config, remote, kind, why)
        return
    try:
        config.on_tls_error(format_peer(remote), kind, why)
    except Exception:
        logger.exception("on_tls_error failed")


def _nothing_sent(remote: tuple[str, int], why: str) -> None:
    # Connect and close with nothing sent: a TCP health check or a port scan, not bad input.
    logger.debug("websocket connection from %s: %s", format_peer(remote), why)


def _bad_handshake(config: _ServerConfig, remote: tuple[str, int], kind: str, why: str) -> None:
    peer = format_peer(remote)
    if config.on_bad_handshake is None:
        logger.debug("websocket handshake from %s failed (%s): %s", peer, kind, why)
        return
    try:
        config.on_bad_handshake(peer, kind, why)
    except Exception:
        logger.exception("on_bad_handshake failed")


async def _run_handler(config: _ServerConfig, request: WebSocketRequest) -> None:
    failed = False
    try:
        await config.handler(request)
    except TransportError as exc:
        # The peer went away or misbehaved; not a bug in the handler.
        logger.info("websocket handler for %s %s ended: %r", request.remote, request.path, exc)
        failed = True
    except Exception:
        logger.exception("websocket handler for %s %s crashed", request.remote, request.path)
        failed = True
    if not request.answered:
        # The handler neither accepted nor rejected (or crashed first).
        request._answer()
        await _send_rejection(
            request._stream, request._protocol, config, 500, "Internal Server Error\n", ()
        )
        return
    if request.connection is not None:
        # RFC 6455 §7.4.1: 1011 when the server hit an unexpected condition.
        await request.connection.close(1011 if failed else 1000)


async def serve_websocket(
    handler: Callable[[WebSocketRequest], Awaitable[object]],
    host: str | None,
    port: int,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    handshake_timeout_s: float = 5.0,
    max_handshakes: int = 64,
    max_handshakes_per_peer: int | None = None,
    max_message_bytes: int | None = 1 << 20,
    send_timeout_s: float = 2.0,
    ping_interval_s: float | None = None,
    ping_timeout_s: float | None = None,
    close_timeout_s: float = 2.0,
    reuse_port: bool = False,
    listeners: Sequence[trio.SocketListener] | None = None,
    ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
    tls_handshake_timeout_s: float | None = None,
    on_bad_handshake: Callable[[str, str, str], None] | None = None,
    on_tls_error: Callable[[str, str, str], None] | None = None,
    on_refused: Callable[[str, Refusal], None] | None = None,
) -> NoReturn:
    """Serve WebSocket connections forever; ``await handler(request)`` for each.

    Each accepted connection runs in a task of this server's nursery: the upgrade
    request is read within ``handshake_timeout_s`` of the TCP accept (slow or oversized
    requests are dropped), then ``handler(request)`` decides with ``request.accept()``
    or ``request.reject(status, body)``. At most ``max_handshakes`` handshakes run at
    once, and ``max_handshakes_per_peer`` from one address (IPv6: one /64; None: no
    limit of its own): a connection over the per-peer limit is reset at accept, one over
    the total gets a canned 503; ``on_refused(peer, reason)`` hears of both, and nobody
    already in a handshake is evicted. When the handler returns the connection is closed
    (1000, or 1011 if it raised); a handler exception is logged and never stops the
    server. ``task_status.started`` reports the bound ``(host, port)`` list (bind port
    0 and read it back). ``listeners`` replaces ``host``/``port``/``reuse_port`` with
    listeners opened by the caller (the server owns and closes them); ``ssl_context``
    serves ``wss://``: a context, or a function returning the current one, called for
    every new connection (certificate reload). The TLS handshake is bounded by
    ``tls_handshake_timeout_s`` (default: ``handshake_timeout_s``) and reported through
    ``on_tls_error(peer, kind, why)`` when it fails (default: ``on_bad_handshake``).
    ``on_bad_handshake(peer, kind, why)`` is called for every
    connection that sent something and never became a WebSocket (garbage, slowloris, a
    plain HTTP request); ``kind`` is ``bad_handshake`` or ``handshake_timeout``. A
    connection that closes without sending a byte (a TCP health check) is not reported.
    Peers are ``"host:port"`` as accept(2) gave them.

    A handshake slot is held until the handler answers (or, with
    ``accept(keep_pending=True)``, until ``request.release_pending()``), so handlers
    should decide promptly (route lookup, auth) and do their long work after that.
    """
    if listeners is None:
        bound = await open_tcp_listeners(host, port, reuse_port=reuse_port)
    else:
        bound = list(listeners)
    config = _ServerConfig(
        handler=handler,
        handshake_timeout_s=handshake_timeout_s,
        max_handshakes=max_handshakes,
        max_message_bytes=max_message_bytes,
        send_timeout_s=send_timeout_s,
        ping_interval_s=ping_interval_s,
        ping_timeout_s=ping_timeout_s,
        close_timeout_s=close_timeout_s,
        ssl_context=ssl_context,
        on_bad_handshake=on_bad_handshake,
        tls_handshake_timeout_s=tls_handshake_timeout_s,
        on_tls_error=on_tls_error,
    )
    per_peer = max_handshakes if max_handshakes_per_peer is None else max_handshakes_per_peer
    admission = Admission(max_handshakes, min(per_peer, max_handshakes))

    def refused(peer: tuple[str, int], reason: Refusal) -> None:
        if on_refused is not None:
            on_refused(format_peer(peer), reason)
        elif reason == "too_many_pending_per_peer":
            logger.debug("websocket connection from %s reset: %s", format_peer(peer), reason)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                serve_admitted,
                functools.partial(_serve_connection, config),
                bound,
                admission,
                on_refused=refused,
                busy_answer=functools.partial(_refuse_busy, config),
            )
        )
        task_status.started(listener_addresses(bound))
    raise AssertionError("unreachable: the accept loops never return")  # pragma: no cover
