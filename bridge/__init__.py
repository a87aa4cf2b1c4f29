"""bridge: connects live telephone calls to applications over WebSocket."""

from ._errors import (
    BridgeError,
    ConfigError,
    ConnectionClosed,
    DialectError,
    HandshakeError,
    HandshakeRejected,
    ListenerError,
    MessageTooBig,
    OutboxError,
    StreamError,
    StreamNotFound,
    StreamRefused,
    TransportError,
    TransportTimeout,
    UnsupportedMessage,
)
from ._version import __version__

__all__ = [
    "BridgeError",
    "ConfigError",
    "ConnectionClosed",
    "DialectError",
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
    "__version__",
]
