"""Glue between the daemon and ``bridge.cluster`` (the only module that knows both).

The daemon calls these from a handful of small hook points (listed in
``bridge/cluster/__init__.py`` and docs/cluster.md); each is a no-op unless
``[cluster] enabled``. What they do:

* :func:`serve_cluster`: joins the cluster for the life of the daemon nursery and sets
  ``daemon.cluster``; the admin API gets :func:`admin_backend` (cluster-wide);
* :func:`stream_started` / ``daemon.cluster.stream_ended``: registrations;
* :func:`emit`: events with a callback URL go through Redis;
* :func:`carrier_connected` (``_carrier._handle_carrier``, after the ``start``, through
  ``CallAdmission.cluster_carrier_connected``): a re-dial whose stream lives in another
  process is carried there; one whose process died ends that stream (DroppedStream,
  once) and is refused or started anew as the route's ``orphan`` says;
* :func:`app_connecting` (``_carrier._handle_app``, through
  ``CallAdmission.cluster_app_connecting``): an app dialling in for a stream of another
  process is authenticated here with the route's token, then carried there;
* :func:`adopt`: the owner's side of both.

The listeners never call this module: they have the daemon's ``CallAdmission``
(``_admission.py``), whose cluster hooks the daemon answers from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from .._errors import (
    ClusterUnavailable,
    ConnectionClosed,
    DialectError,
    FramingError,
    HandoffFailed,
    StreamRefused,
)
from .._version import __version__
from ..dialects import Event, Start
from ..transports import WebSocketConnection, WebSocketRequest, adopt_websocket_server, format_peer
from ._config import Config, RouteConfig
from ._credentials import as_bytes, matches
from ._events import StreamEvent, parse_iso_utc, sign

if TYPE_CHECKING:
    from .. import cluster as _cluster
    from ._daemon import Daemon

# bridge.cluster (and with it the Redis client) is imported by the functions that need
# it, on first use: a single process never loads it.

__all__ = [
    "admin_backend",
    "adopt",
    "app_connecting",
    "carrier_connected",
    "cluster_settings",
    "emit",
    "serve_cluster",
    "stream_started",
]

logger = logging.getLogger("bridge.cluster")

LISTENER = "websocket"
#: A resumed leg may arrive before the owner noticed the old one drop (the FIN and the
#: new connection race): wait this long for the stream to start waiting for it.
_RESUME_GRACE_S = 1.0


def cluster_settings(config: Config) -> _cluster.ClusterSettings:
    from .. import cluster as _cluster

    c = config.cluster
    cb = config.callbacks
    listen = c.listen_addr
    assert listen is not None
    return _cluster.ClusterSettings(
        redis_url=c.redis_url,
        secret=as_bytes(c.secret),
        node_id=c.node_id,
        key_prefix=c.key_prefix,
        lease_s=c.lease_s,
        listen=listen,
        advertise=c.advertise,
        socket_dir=c.socket_dir,
        ended_ttl_s=c.ended_ttl_s,
        callback_timeout_s=cb.timeout_s,
        backoff_s=cb.backoff_s,
        max_backoff_s=cb.max_backoff_s,
        give_up_after_s=cb.give_up_after_s,
        concurrency=cb.concurrency,
    )


# --------------------------------------------------------------------------- events


def event_doc(ev: StreamEvent) -> _cluster.EventDoc:
    from .. import cluster as _cluster

    return _cluster.EventDoc(
        event_id=ev.event_id,
        stream_id=ev.stream_id,
        event=ev.event,
        created_at=ev.timestamp.timestamp(),
        callback_url=ev.callback_url,
        callback_secret=ev.callback_secret,
        body=ev.body().decode(),
    )


def _event_from_doc(doc: _cluster.EventDoc) -> StreamEvent:
    body = msgspec.json.decode(doc.body)
    body["timestamp"] = parse_iso_utc(body["timestamp"])
    return StreamEvent(**body, callback_url=doc.callback_url, callback_secret=doc.callback_secret)


def emit(daemon: Daemon, ev: StreamEvent) -> None:
    """An event with a callback URL, in cluster mode: through Redis while the node runs,
    into the local outbox once it has stopped (a stream closing after it)."""
    node = daemon.cluster
    if node is not None and node.events._accepting:
        node.emit(event_doc(ev))
    elif daemon.store is not None:
        daemon.store.emit(ev)


def _make_dropped(daemon: Daemon) -> Callable[[_cluster.StreamEntry, str], _cluster.EventDoc]:
    def make(entry: _cluster.StreamEntry, dead: str) -> _cluster.EventDoc:
        duration = None
        if entry.started_at:
            try:
                started = parse_iso_utc(entry.started_at)
                duration = max(0.0, (_now() - started).total_seconds())
            except ValueError:
                duration = None
        ev = StreamEvent.dropped(
            stream_id=entry.stream_id,
            call_id=entry.call_id,
            app_url=entry.app_url,
            route=entry.route,
            reason="connection_error",
            error=f"bridge process {dead} lost (its cluster lease expired)",
            duration_s=duration,
            callback_url=entry.callback_url,
            callback_secret=entry.callback_secret,
            # The same id whoever builds it: a retried claim can never mint a second one.
            event_id=_dropped_event_id(entry.stream_id),
        )
        return event_doc(ev)

    return make


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _dropped_event_id(stream_id: str) -> str:
    import uuid

    return uuid.uuid5(uuid.NAMESPACE_URL, f"bridge:orphaned:{stream_id}").hex


def _spill(daemon: Daemon) -> Callable[[list[_cluster.EventDoc]], None]:
    def spill(docs: list[_cluster.EventDoc]) -> None:
        store = daemon.last_store
        for doc in docs:
            if store is not None:
                try:
                    store.emit(_event_from_doc(doc))
                    continue
                except Exception:
                    pass
            logger.error(
                "event lost: neither Redis nor the local outbox could take it",
                extra={"event_id": doc.event_id, "stream_id": doc.stream_id},
            )

    return spill


# --------------------------------------------------------------------------- running


async def serve_cluster(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Join the cluster (a task of the daemon nursery); ``daemon.cluster`` meanwhile."""
    from .. import cluster as _cluster

    settings = cluster_settings(daemon.config)

    async def adopt_here(
        handoff: _cluster.Handoff, sock: trio.socket.SocketType, received: bytes
    ) -> None:
        await adopt(daemon, handoff, sock, received)

    async with _cluster.open_cluster_node(
        settings,
        registry=daemon.metrics.registry,
        backend=daemon,
        adopt=adopt_here,
        make_dropped=_make_dropped(daemon),
        sign=sign,
        spill=_spill(daemon),
        user_agent=f"bridge/{__version__}",
    ) as node:
        daemon.cluster = node
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            daemon.cluster = None


def admin_backend(daemon: Daemon) -> Any:
    """The admin API's backend: cluster-wide in cluster mode."""
    node = daemon.cluster
    if node is None:
        return daemon
    from .. import cluster as _cluster

    return _cluster.ClusterBackend(daemon, node)


def stream_started(daemon: Daemon, stream: Any, route: RouteConfig, listener: str) -> None:
    node = daemon.cluster
    if node is None:
        return
    callback = route.callback
    node.stream_started(
        stream.stream_id,
        call_id=stream.call_id,
        route=route.name,
        listener=listener,
        app_url=stream.app_url,
        callback_url=callback.url if callback else "",
        callback_secret=callback.secret if callback else "",
    )


# --------------------------------------------------------------------------- carrier re-dials


def _handoff_of(
    kind: str, stream_id: str, route: str, request: WebSocketRequest
) -> _cluster.Handoff:
    from .. import cluster as _cluster

    return _cluster.Handoff(
        kind=kind,  # type: ignore[arg-type]
        stream_id=stream_id,
        route=route,
        path=request.path,
        query=dict(request.query),
        headers=[(k, v) for k, v in request.headers.raw_items()],
        peer=request.remote,
    )


async def carrier_connected(
    daemon: Daemon,
    route: RouteConfig,
    request: WebSocketRequest,
    ws: WebSocketConnection,
    start: Start,
    local: bool,
) -> bool:
    """After a carrier's ``start`` (cluster mode): True when the connection was dealt
    with here (carried to its owner, or refused); False to go on as a single process
    would (resume the local stream ``local``, or start a new one)."""
    node = daemon.cluster
    assert node is not None
    peer = format_peer(request.remote)
    if local:
        ws.stop_recording()
        return False
    try:
        found = await node.lookup_resume(route.name, start.call_id, start.stream_id)
    except ClusterUnavailable as exc:
        # Redis is down: a new call and a re-dial look the same, and new calls must go
        # on. A re-dial of another process's stream becomes a new stream here (counted
        # in bridge_cluster_lookups_failed_total); its old stream ends with its window.
        logger.warning(
            "registry unavailable: carrier connection handled here as a new call: %s",
            exc,
            extra={"call_id": start.call_id, "peer": peer},
        )
        ws.stop_recording()
        return False
    if found is None or found.ended or found.owner == node.node_id:
        ws.stop_recording()
        return False
    if found.node is None:
        # The owner's lease has run out: its stream is gone with it.
        await _drop(daemon, found)
        return await _orphan_policy(daemon, route, ws, start, peer, "orphaned")
    request.release_pending()
    handoff = _handoff_of("carrier", found.stream_id, route.name, request)
    sock, received = await ws.detach()
    try:
        via = await node.hand_off(found.node, handoff, sock, received)
    except HandoffFailed as exc:
        logger.warning(
            "re-dial could not be carried to %s: %s",
            found.owner,
            exc,
            extra={"stream_id": found.stream_id, "call_id": start.call_id, "peer": peer},
        )
    else:
        logger.info(
            "re-dial carried to the stream's owner",
            extra={"stream_id": found.stream_id, "owner": found.owner, "via": via, "peer": peer},
        )
        return True
    # The owner did not take it: if it is dying, its lease runs out soon.
    deadline = trio.current_time() + node.settings.lease_s * 3
    dead = await node.wait_owner_dead(found.owner, deadline)
    if dead:
        await _drop(daemon, found)
    allow_new = dead and route.orphan == "new"
    if not allow_new:
        daemon.refused(
            LISTENER, "orphaned" if dead else "owner_unreachable", peer, call_id=start.call_id
        )
    handoff = _handoff_of("carrier", found.stream_id if not allow_new else "", route.name, request)
    await _adopt_socket(daemon, handoff, sock, received, allow_new=allow_new)
    return True


async def _drop(daemon: Daemon, found: _cluster.Lookup) -> None:
    node = daemon.cluster
    assert node is not None
    try:
        await node.drop_orphan(found)
    except ClusterUnavailable as exc:
        logger.warning("could not end orphaned stream %s: %s", found.stream_id, exc)


async def _orphan_policy(
    daemon: Daemon, route: RouteConfig, ws: WebSocketConnection, start: Start, peer: str, why: str
) -> bool:
    if route.orphan == "new":
        ws.stop_recording()
        return False
    daemon.refused(LISTENER, why, peer, call_id=start.call_id)
    await ws.close(1008 if why == "orphaned" else 1013, why)
    return True


# --------------------------------------------------------------------------- inbound apps


async def app_connecting(daemon: Daemon, request: WebSocketRequest, stream_id: str) -> bool:
    """An app dialling in for a stream this process does not wait for (cluster mode):
    True when dealt with here (carried to the owner, or refused 401); False to answer
    as a single process would (404/409)."""
    node = daemon.cluster
    assert node is not None
    try:
        found = await node.lookup_stream(stream_id)
    except ClusterUnavailable:
        return False
    if (
        found is None
        or found.ended
        or found.owner == node.node_id
        or found.node is None
        or found.entry is None
    ):
        return False
    route = daemon.config.route_by_name(found.entry.route)
    if route is None or route.app.mode != "accept":
        return False
    peer = format_peer(request.remote)
    token = route.app.token
    # The route's own check, here, before anything is handed over.
    if not token or not matches(request.query.get("token", ""), token):
        daemon.auth_failed(LISTENER, route.name, "bad_token", peer, request.path)
        await request.reject(
            401, msgspec.json.encode({"error": "unauthorized"}), [("WWW-Authenticate", "Bearer")]
        )
        return True
    ws = await request.accept()
    ws.record_input()
    handoff = _handoff_of("app", stream_id, route.name, request)
    sock, received = await ws.detach()
    try:
        via = await node.hand_off(found.node, handoff, sock, received)
    except HandoffFailed as exc:
        logger.warning("app connection could not be carried to %s: %s", found.owner, exc)
        daemon.refused(LISTENER, "owner_unreachable", peer)
        await _adopt_socket(daemon, handoff, sock, received, allow_new=False, refuse=True)
        return True
    logger.info(
        "app connection carried to the stream's owner",
        extra={"stream_id": stream_id, "owner": found.owner, "via": via, "peer": peer},
    )
    return True


# --------------------------------------------------------------------------- the owner's side


async def adopt(
    daemon: Daemon, handoff: _cluster.Handoff, sock: trio.socket.SocketType, received: bytes
) -> None:
    """A connection carried here from another process: continue it."""
    await _adopt_socket(daemon, handoff, sock, received, allow_new=True)


async def _adopt_socket(
    daemon: Daemon,
    handoff: _cluster.Handoff,
    sock: trio.socket.SocketType,
    received: bytes,
    *,
    allow_new: bool,
    refuse: bool = False,
) -> None:
    cfg = daemon.config.websocket
    async with adopt_websocket_server(
        sock,
        received,
        remote=handoff.peer,
        ping_interval_s=20.0,
        ping_timeout_s=20.0,
        max_message_bytes=cfg.max_message_bytes,
    ) as ws:
        if refuse:
            await ws.close(1013, "stream owner unreachable")
            return
        try:
            if handoff.kind == "app":
                await _adopt_app(daemon, handoff, ws)
            else:
                await _adopt_carrier(daemon, handoff, ws, allow_new=allow_new)
        except ConnectionClosed:
            pass


async def _adopt_app(daemon: Daemon, handoff: _cluster.Handoff, ws: WebSocketConnection) -> None:
    slot = daemon.accept_slot(handoff.stream_id)
    if slot is None or not slot.waiting or slot.ws is not None:
        await ws.close(1008, "not_waiting" if slot is None else "already_connected")
        return
    slot.ws = ws
    slot.ready.set()
    await slot.done.wait()


async def _adopt_carrier(
    daemon: Daemon, handoff: _cluster.Handoff, ws: WebSocketConnection, *, allow_new: bool
) -> None:
    from ._carrier import call_leg_role, carrier_leg, send_accept

    route = daemon.config.route_by_name(handoff.route)
    peer = format_peer(handoff.peer)
    if route is None or route.carrier is None:
        await ws.close(1011, "no such route here")
        return
    if not allow_new:
        await ws.close(1013, "stream owner unreachable")
        return
    # The upgrade request stayed with the process that took it: options that read its
    # query or headers (Asterisk's call_id_query) fall back to the wire's own ids.
    spec, role = call_leg_role(route)
    start: Start | None = None
    pending: list[Event] = []
    try:
        with trio.move_on_after(daemon.config.websocket.handshake_timeout_s):
            while start is None:
                for event in role.receive(await ws.receive()):
                    if start is None and type(event) is Start:
                        start = event
                    elif start is not None:
                        pending.append(event)
    except (DialectError, FramingError) as exc:
        daemon.bad_input(LISTENER, "protocol_error", f"{exc} (carried connection)", peer=peer)
        await ws.close(1008, "protocol error")
        return
    if start is None:
        await ws.close(1008, "no start message")
        return
    leg = carrier_leg(spec, role, ws, start, pending, peer)
    key = (route.name, start.call_id, start.stream_id)
    existing = daemon.resumable_stream(key) if leg.resumable else None
    if existing is not None and not existing.awaiting_call:
        with trio.move_on_after(_RESUME_GRACE_S):
            # The stream has no event for it; a few ms of polling, once per carried re-dial.
            while not existing.awaiting_call and daemon.resumable_stream(key) is existing:  # noqa: ASYNC110
                await trio.sleep(0.005)
    if existing is not None and existing.resume_call(leg):
        logger.info(
            "carrier leg resumed (carried from %s)",
            handoff.via,
            extra={
                "stream_id": existing.stream_id,
                "call_id": start.call_id,
                "route": route.name,
                "peer": peer,
            },
        )
    else:
        try:
            stream = daemon.start_stream(leg, route, LISTENER)
        except StreamRefused as exc:
            daemon.refused(LISTENER, exc.reason, peer, call_id=start.call_id)
            await ws.close(1013, exc.reason)
            return
        if leg.resumable:
            daemon.register_resumable(key, stream)
    send_accept(ws, role)
    await leg.released.wait()
