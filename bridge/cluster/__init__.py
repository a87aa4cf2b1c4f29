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

Hook points in the daemon (``bridge/daemon``; the glue is ``daemon/_clusterglue.py``,
which is the only module that imports both sides)::

    _daemon.Daemon.serve           opens the node: ``open_cluster_node`` (via the glue)
    _daemon.Daemon.start_stream    node.stream_started(...)            (registry)
    _daemon.Daemon.stream_closed   node.stream_ended(stream_id)        (registry)
    _daemon.Daemon.stream_event    node.emit(doc) instead of the outbox (events)
    _carrier._handle_carrier       glue.route_carrier(...) when the resume key is not
                                   local; node.set_resume(...) after a new stream
    _carrier._handle_app           glue.route_app(...) when the stream id is not local
    _daemon.Daemon._start_listeners  the admin API gets ``ClusterBackend(daemon, node)``
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
