"""bridge.transports: Trio I/O that moves bytes and messages (and knows nothing of audio).

* WebSocket client and server on the ``websockets`` sans-IO protocol objects:
  :func:`open_websocket_client`, :func:`serve_websocket`, :class:`WebSocketConnection`,
  :class:`WebSocketRequest`.
* TCP: :func:`open_tcp_listener(s) <open_tcp_listeners>` with ``SO_REUSEPORT``,
  :func:`set_nodelay`, :func:`serve_tcp`.
* UDP: :func:`open_udp_socket`, :class:`UdpPortPool` for RTP ports.
* HTTP/1.1 server on h11 with hard limits: :func:`serve_http`, :class:`HttpRequest`,
  :class:`HttpResponse`, :class:`HttpLimits`, :class:`HttpStats`.
* :class:`Poller`: one epoll for a process's media sockets (readers in poll mode).

Errors are the ``TransportError`` family from :mod:`bridge._errors`.
"""

from ._http import (
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
    HttpStats,
    PeerLimiter,
    render_response,
    serve_http,
)
from ._poller import Poller, PollRegistration, current_poller, use_poller
from ._tcp import open_tcp_listener, open_tcp_listeners, serve_tcp, set_nodelay
from ._udp import UdpPortPool, open_udp_socket
from ._websocket import (
    HeadersLike,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_client,
    serve_websocket,
)

__all__ = [
    "HeadersLike",
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "HttpStats",
    "PeerLimiter",
    "PollRegistration",
    "Poller",
    "UdpPortPool",
    "WebSocketConnection",
    "WebSocketRequest",
    "current_poller",
    "open_tcp_listener",
    "open_tcp_listeners",
    "open_udp_socket",
    "open_websocket_client",
    "render_response",
    "serve_http",
    "serve_tcp",
    "serve_websocket",
    "set_nodelay",
    "use_poller",
]
