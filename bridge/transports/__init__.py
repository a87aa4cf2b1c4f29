"""bridge.transports: Trio I/O that moves bytes and messages (and knows nothing of audio).

* WebSocket client and server on the ``websockets`` sans-IO protocol objects:
  :func:`open_websocket_client`, :func:`serve_websocket`, :class:`WebSocketConnection`,
  :class:`WebSocketRequest`.
* TCP: :func:`open_tcp_listener(s) <open_tcp_listeners>` with ``SO_REUSEPORT``,
  :func:`set_nodelay`, :func:`serve_tcp`, and :func:`serve_admitted` with an
  :class:`Admission` (pending connections limited per peer and in all);
  :class:`TcpPipe`, a connected stream with the non-blocking writer
  (``send_nowait`` + ``serve_writer``) that the WebSocket connection has too.
* UDP: :func:`open_udp_socket`, :class:`UdpPortPool` for RTP ports, and
  :class:`DatagramSocket`, a media leg's socket I/O (batched non-blocking receive, a
  ``sendto`` that drops rather than waits).
* HTTP/1.1 server on h11 with hard limits: :func:`serve_http`, :class:`HttpRequest`,
  :class:`HttpResponse`, :class:`HttpLimits`, :class:`HttpStats`.
* :class:`Poller`: one epoll for a process's media sockets (readers in poll mode).
* Addresses: :func:`parse_host_port` reads every ``host:port`` (``[v6]:port``) bridge
  is given, :func:`format_peer` writes one.

Errors are the ``TransportError`` family from :mod:`bridge._errors`.
"""

from ._addr import HOST_PORT_FORM, format_peer, host_problem, parse_host_port
from ._admission import Admission, Pending, Refusal, peer_key
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
from ._pipes import TcpPipe
from ._poller import Poller, PollRegistration, current_poller, use_poller
from ._tcp import (
    open_tcp_listener,
    open_tcp_listeners,
    raise_open_files_limit,
    serve_admitted,
    serve_tcp,
    set_nodelay,
)
from ._udp import Address, DatagramSocket, UdpPortPool, open_udp_socket
from ._websocket import (
    HeadersLike,
    WebSocketConnection,
    WebSocketRequest,
    adopt_websocket_server,
    open_websocket_client,
    serve_websocket,
)

__all__ = [
    "HOST_PORT_FORM",
    "Address",
    "Admission",
    "DatagramSocket",
    "HeadersLike",
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "HttpStats",
    "PeerLimiter",
    "Pending",
    "PollRegistration",
    "Poller",
    "Refusal",
    "TcpPipe",
    "UdpPortPool",
    "WebSocketConnection",
    "WebSocketRequest",
    "adopt_websocket_server",
    "current_poller",
    "format_peer",
    "host_problem",
    "open_tcp_listener",
    "open_tcp_listeners",
    "open_udp_socket",
    "open_websocket_client",
    "parse_host_port",
    "peer_key",
    "raise_open_files_limit",
    "render_response",
    "serve_admitted",
    "serve_http",
    "serve_tcp",
    "serve_websocket",
    "set_nodelay",
    "use_poller",
]
