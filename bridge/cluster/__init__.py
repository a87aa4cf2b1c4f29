"""bridge.cluster: several bridge processes, on one host or many, as one service.

Off by default (``[cluster] enabled = false``): a single process, and ``make run``, use
none of this and need no Redis. With it on, every process:

* registers itself (a lease) and each of its streams in Redis (``_registry``), so that
* a carrier re-dial or an accept-mode app connection that lands on a process which does
  not own its stream is **carried to the owner** (``_handoff``: the descriptor over a
  Unix socket on the same host, a byte relay across machines), authenticated with the
  cluster secret, and resumes there exactly as on a single process;
* sends its status-callback events through a Redis stream (``_events``), so that the
  events of a process that dies are delivered by a survivor, and a survivor ends its
  streams with one ``DroppedStream`` each;
* answers the admin API for the whole cluster (``ClusterBackend``).

Nothing on the per-frame path touches Redis: registrations happen at stream start and
end, lookups at connection setup, and events are queued in memory and written by a task.
docs/cluster.md is the operator's guide.

Hook points in the daemon (``bridge/daemon``; each a few lines, each a no-op while
``daemon.cluster`` is None; the glue is ``daemon/_clusterglue.py``, the only module that
imports both sides, and it imports this package only in cluster mode)::

    _daemon.Daemon.serve            after manager.serve, before _start_listeners:
                                    nursery.start(_clusterglue.serve_cluster, self)
                                    (sets daemon.cluster for the nursery's life)
    _daemon.Daemon._start_listeners create_admin_app(_clusterglue.admin_backend(self), ...)
    _daemon.Daemon.start_stream     after manager.start: _clusterglue.stream_started(...)
    _daemon.Daemon.stream_event     events with a callback_url: _clusterglue.emit(self, ev)
                                    instead of store.emit(ev)
    _daemon.Daemon.stream_closed    daemon.cluster.stream_ended(stream_id)
    _daemon.Daemon.register_resumable
                                    daemon.cluster.set_resume(id, *key)

and in the WebSocket listener, through its ``CallAdmission`` (``_admission.py``; the
daemon answers with ``_clusterglue``)::

    _carrier._handle_carrier        after request.accept(): if admission.clustered:
                                    ws.record_input();
                                    after the start, before resuming locally:
                                    await admission.cluster_carrier_connected(...) -> return
                                    after a new stream: admission.register_resumable(...)
    _carrier._handle_app            slot is None:
                                    await admission.cluster_app_connecting(...) -> return

and in the transport (``transports/_websocket.py``): ``WebSocketConnection.record_input``,
``stop_recording``, ``detach`` and ``adopt_websocket_server`` (a server connection
continued in another process).
"""

from ._backend import ClusterBackend
from ._events import ClusterEvents, EventDoc
from ._node import ClusterMetrics, ClusterNode, ClusterSettings, open_cluster_node
from ._registry import Lookup, NodeInfo, StreamEntry, resume_digest
from ._wire import Handoff

__all__ = [
    "ClusterBackend",
    "ClusterEvents",
    "ClusterMetrics",
    "ClusterNode",
    "ClusterSettings",
    "EventDoc",
    "Handoff",
    "Lookup",
    "NodeInfo",
    "StreamEntry",
    "open_cluster_node",
    "resume_digest",
]
