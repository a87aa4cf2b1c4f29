"""What a call-leg listener may ask of the daemon: :class:`CallAdmission`.

The listeners (``_audiosocket``, ``_carrier``, ``_rtp``) accept connections, read a call's
first message and hand the call leg over. They receive this narrow interface, which the
``Daemon`` implements, as the admin API receives its ``AdminBackend``; they never import
the daemon (``tests/test_layers.py`` checks it). Through it a listener can:

* find the route of a call (``match_route``), and ask whether a call may start now
  (``check_admission``: the one admission check, also made by ``start_stream``);
* start the stream of an admitted call leg (``start_stream``);
* report what it refused or could not read (``refused``, ``bad_input``,
  ``admission_refused``, ``auth_failed``): one metric and one log line each, within
  the daemon's bad-peer budget;
* find a carrier's stream again on a re-dial (``resumable_stream``,
  ``register_resumable``), and an accept-mode stream waiting for its app
  (``accept_slot`` and its two partners);
* in cluster mode, hand a connection for another process's stream to the cluster
  (``clustered``, ``cluster_carrier_connected``, ``cluster_app_connecting``).

Every method is cheap and synchronous except the two cluster hooks, and none is on a
per-frame path: they run once per connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio

from ..dialects import Start
from ..streams import CallLeg, Stream
from ..transports import WebSocketConnection, WebSocketRequest
from ._config import Config, RouteConfig
from ._tls import ServerTls

__all__ = ["AcceptSlot", "CallAdmission", "ResumeKey"]

#: A carrier stream, as a re-dial names it: (route, carrier call id, carrier stream id).
ResumeKey = tuple[str, str, str]


@attrs.define(slots=True, eq=False)
class AcceptSlot:
    """An accept-mode stream (``app.mode = "accept"``) waiting for its app to dial in.

    The stream's connector opens it and waits on ``ready``; the WebSocket listener (or a
    connection carried from another process) puts the app's connection in ``ws``, sets
    ``ready`` and holds the connection until ``done``."""

    route: RouteConfig
    ready: trio.Event = attrs.field(factory=trio.Event)
    ws: WebSocketConnection | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    waiting: bool = False


class CallAdmission(Protocol):
    """What a call-leg listener needs from the daemon (implemented by the daemon)."""

    @property
    def config(self) -> Config:
        """The running configuration (a SIGHUP replaces routes, [stream], [daemon] and the
        live [websocket] keys; read it per connection, never keep it)."""
        ...

    @property
    def tls(self) -> ServerTls | None:
        """The WebSocket listener's TLS context when it serves ``wss://`` (a SIGHUP swaps
        its certificate), else None."""
        ...

    # -- routes and admission ----------------------------------------------------------

    def match_route(
        self,
        listener: str,
        path: str = "",
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        subprotocols: Sequence[str] = (),
    ) -> RouteConfig | None:
        """The first route of ``listener`` that matches, or None (``subprotocols``: the
        WebSocket subprotocols the caller offered, for dialects that route on one)."""
        ...

    def check_admission(self) -> None:
        """Raise ``StreamRefused`` when no new call may start now: the daemon is draining
        (``draining``), ``max_streams`` streams are live (``max_streams``), or the
        streams nursery is not running (``not_ready``). A listener asks before it spends
        anything on a call (an RTP port, a WebSocket upgrade); ``start_stream`` asks
        again."""
        ...

    def start_stream(
        self, call: CallLeg, route: RouteConfig, listener: str, stream_id: str | None = None
    ) -> Stream:
        """Admit (``check_admission``) and start the stream of ``call`` on ``route``; the
        stream owns the leg from here. Raises ``StreamRefused`` (the leg is still the
        caller's to close)."""
        ...

    def stream_live(self, stream_id: str) -> bool:
        """Whether a stream of that id is live in this process."""
        ...

    # -- reports -----------------------------------------------------------------------

    def refused(self, listener: str, reason: str, peer: str, *, call_id: str = "") -> None:
        """A call refused (no route, draining, full, ...): a count and a log line."""
        ...

    def bad_input(self, leg: str, kind: str, message: str, *, peer: str = "") -> None:
        """One bad connection on a listener: a count and a line within the budget."""
        ...

    def bad_input_counter(self, leg: str, kind: str) -> Callable[[], None]:
        """A counter of bad input for a path that sees it per packet (malformed RTP):
        counted only, the leg logs once."""
        ...

    def admission_refused(self, listener: str, reason: str, peer: str) -> None:
        """A connection closed at accept: over a pending limit (per peer or in all)."""
        ...

    def auth_failed(self, listener: str, route: str, reason: str, peer: str, path: str) -> None:
        """A handshake whose credentials did not match (answered 401)."""
        ...

    # -- carrier re-dials (reconnect_window) -------------------------------------------

    def resumable_stream(self, key: ResumeKey) -> Stream | None:
        """The live stream a carrier re-dial with ``key`` belongs to, if any."""
        ...

    def register_resumable(self, key: ResumeKey, stream: Stream) -> None:
        """``stream`` may be resumed by a re-dial with ``key`` until it ends (in cluster
        mode, from any process)."""
        ...

    # -- accept mode ---------------------------------------------------------------------

    def accept_slot(self, stream_id: str) -> AcceptSlot | None:
        """The slot of an accept-mode stream waiting for its app, or None."""
        ...

    def open_accept_slot(self, stream_id: str, slot: AcceptSlot) -> None:
        """``slot`` waits for the app of ``stream_id`` (the stream's connector)."""
        ...

    def close_accept_slot(self, stream_id: str, slot: AcceptSlot) -> None:
        """``slot`` waits no more (a newer slot of the same stream stays)."""
        ...

    # -- cluster hooks (no-ops while not clustered: callers check ``clustered``) --------

    @property
    def clustered(self) -> bool:
        """Whether this process is in a cluster (``[cluster] enabled``) now."""
        ...

    async def cluster_carrier_connected(
        self,
        route: RouteConfig,
        request: WebSocketRequest,
        ws: WebSocketConnection,
        start: Start,
        local: bool,
    ) -> bool:
        """After a carrier's start message: True when the connection was dealt with (carried
        to the process that owns its stream, or refused); False to go on here (``local``:
        the stream to resume is in this process)."""
        ...

    async def cluster_app_connecting(self, request: WebSocketRequest, stream_id: str) -> bool:
        """An app dialling in for a stream this process does not wait for: True when dealt
        with (carried to its owner, or refused 401); False to answer 404/409 here."""
        ...
