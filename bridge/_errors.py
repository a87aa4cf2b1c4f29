"""Every error bridge raises, in one place.

The tree (httpx style)::

    BridgeError
    ├── ConfigError                 a config file or value is wrong (file, field path, what)
    ├── DialectError                malformed input on a wire protocol (dialect, what)
    │   └── UnsupportedMessage      well-formed, but not something this role may receive
    ├── TransportError              a socket-level failure on any leg
    │   ├── HandshakeError          the WebSocket/TCP handshake failed or was refused
    │   │   └── HandshakeRejected   the peer answered the upgrade with an HTTP status
    │   ├── TransportTimeout        a bounded step (connect, handshake, send, ping, close) ran out
    │   ├── ConnectionClosed        the peer closed, or the connection is already gone
    │   └── FramingError            a peer broke its transport's framing (``kind`` says how)
    │       └── MessageTooBig       a peer sent a message or frame over the configured maximum
    ├── StreamError                 the stream engine could not do what was asked
    │   ├── StreamRefused           a new stream was refused (reason: max_streams, draining, no_route, ...)
    │   └── StreamNotFound          no live or recorded stream has that id
    ├── OutboxError                 the durable event outbox could not be read or written
    ├── ClusterError                cluster mode (bridge.cluster) could not do what was asked
    │   ├── ClusterUnavailable      Redis cannot be reached (or answered with an error)
    │   └── HandoffFailed           a connection could not be carried to its owner process
    └── ListenerError               a listener could not bind (or start on) its address at start-up

Media code (``bridge.media``) is below this module in the layering and raises
plain ``ValueError`` for bad arguments; dialects wrap what they see from the wire
in ``DialectError`` so that a hostile peer never produces any other exception.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "ClusterError",
    "ClusterUnavailable",
    "ConfigError",
    "ConnectionClosed",
    "DialectError",
    "FramingError",
    "HandoffFailed",
    "HandshakeError",
    "HandshakeRejected",
    "ListenerError",
    "MessageTooBig",
    "OutboxError",
    "StreamError",
    "StreamNotFound",
    "StreamRefused",
    "TransportError",
    "TransportTimeout",
    "UnsupportedMessage",
]


class BridgeError(Exception):
    """Base class of every error bridge raises on purpose."""


class ConfigError(BridgeError):
    """A configuration file or value is invalid.

    ``path`` is the dotted field path (``routes[1].stream.buffer``), ``file`` the
    file it came from (``None`` for the embedded default or an in-memory string).
    """

    def __init__(self, message: str, *, path: str = "", file: str | None = None) -> None:
        self.message = message
        self.path = path
        self.file = file
        where = f"{file}: " if file else ""
        at = f"{path}: " if path else ""
        super().__init__(f"{where}{at}{message}")


class DialectError(BridgeError):
    """Malformed input on a wire protocol. ``dialect`` names the protocol."""

    def __init__(self, dialect: str, message: str) -> None:
        self.dialect = dialect
        self.message = message
        super().__init__(f"{dialect}: {message}")


class UnsupportedMessage(DialectError):
    """A well-formed message that this role of the dialect may not receive."""


class TransportError(BridgeError):
    """A socket-level failure."""


class HandshakeError(TransportError):
    """The WebSocket (or other) handshake failed."""


class HandshakeRejected(HandshakeError):
    """The peer answered the WebSocket upgrade with a non-101 HTTP status."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        super().__init__(f"handshake rejected with HTTP {status}" + (f": {message}" if message else ""))


class TransportTimeout(TransportError):
    """A bounded transport step ran out of time. ``step`` names it."""

    def __init__(self, step: str, timeout_s: float) -> None:
        self.step = step
        self.timeout_s = timeout_s
        super().__init__(f"{step} timed out after {timeout_s:g}s")


class ConnectionClosed(TransportError):
    """The connection is closed. ``code``/``reason`` are the WebSocket close frame, if any."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        detail = f" ({code}{' ' + reason if reason else ''})" if code is not None else ""
        super().__init__(f"connection closed{detail}")


class FramingError(TransportError):
    """A peer broke the framing rules of its transport and the connection was failed:
    for WebSocket an invalid or unmasked frame (RFC 6455 §5.1-§5.5, close 1002), invalid
    UTF-8 in a text message (§8.1, 1007), a bad close code (§7.4), an oversize message
    (1009). Bad input, like ``DialectError``, not a lost connection: it is raised once
    by ``receive()``, then ``ConnectionClosed``.

    ``kind`` is the metric label: ``bad_frame``, ``invalid_utf8``, ``bad_close``,
    ``message_too_big``.
    """

    kind: str = "bad_frame"

    def __init__(self, message: str, kind: str | None = None) -> None:
        if kind is not None:
            self.kind = kind
        super().__init__(message)


class MessageTooBig(FramingError):
    """A message or frame exceeded the configured maximum size."""

    kind = "message_too_big"


class StreamError(BridgeError):
    """The stream engine could not do what was asked."""


class StreamRefused(StreamError):
    """A new stream was refused. ``reason`` is the metric label (``max_streams``, ``draining``, ...)."""

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(message or f"stream refused: {reason}")


class StreamNotFound(StreamError):
    """No live or recorded stream has that id."""


class OutboxError(BridgeError):
    """The durable event outbox could not be read or written."""


class ClusterError(BridgeError):
    """Cluster mode could not do what was asked."""


class ClusterUnavailable(ClusterError):
    """Redis cannot be reached, or answered with an error: the registry and the event
    stream are unavailable until it is back (live calls are not affected)."""


class HandoffFailed(ClusterError):
    """A connection could not be carried to the process that owns its stream (the owner
    is unreachable, refused it, or failed the authentication)."""
class ListenerError(BridgeError):
    """A listener could not bind (or start serving on) its address at start-up.

    The message names both, e.g. ``admin listener 127.0.0.1:8081: [Errno 98] Address
    already in use``; ``cause`` is the underlying error (usually an OSError).
    """

    def __init__(self, listener: str, address: str, cause: BaseException) -> None:
        self.listener = listener
        self.address = address
        self.cause = cause
        super().__init__(f"{listener} listener {address}: {cause}")
