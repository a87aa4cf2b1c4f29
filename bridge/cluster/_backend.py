"""The cluster-wide admin API: :class:`ClusterBackend` wraps the daemon's own
``AdminBackend`` (``daemon/_admin.py``) so that the HTTP layer, whichever it is, needs
no change:

* ``GET /v1/streams`` lists every live stream of the cluster, each with its ``owner``:
  this process's own streams as full snapshots, the others' as their registry entries
  (read from Redis about once a second; ``?state=live`` reads them afresh);
* ``GET /v1/streams/{id}`` and ``DELETE /v1/streams/{id}`` answer for a stream of any
  process: what this process does not own is forwarded to its owner over the
  authenticated cluster protocol (``_handoff``), live or recently ended
  (``[cluster] ended_ttl``);
* everything else (readiness, events, ``POST /v1/streams``) is the local process's.

When Redis is down the answers are this process's alone (``bridge_cluster_redis_up`` 0).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import attrs

from .._errors import ClusterUnavailable, HandoffFailed
from ._node import ClusterNode

__all__ = ["ClusterBackend"]

logger = logging.getLogger("bridge.cluster")


@attrs.define(eq=False)
class ClusterBackend:
    local: Any
    node: ClusterNode

    # -- passed through ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.local.ready)

    @property
    def not_ready_reason(self) -> str | None:
        return getattr(self.local, "not_ready_reason", None)

    async def list_events(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.local.list_events(status=status, limit=limit)
        return result

    async def open_rtp_stream(self, request: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.local.open_rtp_stream(request)
        return result

    def __getattr__(self, name: str) -> Any:
        # Optional extras of the local backend (e.g. a log-level endpoint) stay reachable.
        return getattr(self.local, name)

    # -- cluster-wide ----------------------------------------------------------------------

    def _own(self, streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
        me = self.node.node_id
        return [{**s, "owner": me} for s in streams]

    def live_streams(self) -> list[dict[str, Any]]:
        out = self._own(self.local.live_streams())
        seen = {s.get("stream_id") for s in out}
        out.extend(s for s in self.node.registry.remote_streams() if s["stream_id"] not in seen)
        return out

    async def list_streams(
        self, *, state: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if state in (None, "live"):
            try:
                await self.node.registry.refresh_cache()
            except ClusterUnavailable:
                self.node.metrics.lookups_failed.labels(kind="admin").inc()
            live = self.live_streams()
            if since is not None:
                live = [s for s in live if _started_since(s, since)]
            out.extend(live[:limit])
        if state in (None, "ended") and len(out) < limit:
            ended = await self.local.list_streams(
                state="ended", since=since, limit=limit - len(out)
            )
            out.extend(self._own(ended))
        return out

    async def _owner_of(self, stream_id: str) -> Any:
        """The owner's NodeInfo if another live process has (or recently had) it."""
        try:
            found = await self.node.lookup_stream(stream_id, kind="admin")
        except ClusterUnavailable:
            return None
        if found is None or not found.owner or found.owner == self.node.node_id:
            return None
        if found.node is not None:
            return found.node
        if found.ended:
            try:
                return await self.node.node_info(found.owner)
            except ClusterUnavailable:
                return None
        return None

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self.local.get_stream(stream_id)
        if found is not None:
            return {**found, "owner": self.node.node_id}
        owner = await self._owner_of(stream_id)
        if owner is None:
            return None
        try:
            remote = await self.node.rpc(owner, "get_stream", stream_id)
        except HandoffFailed as exc:
            logger.warning("GET forwarded to %s failed: %s", owner.node, exc)
            return None
        if remote is None:
            return None
        return {**remote, "owner": owner.node}

    async def stop_stream(self, stream_id: str) -> bool:
        if await self.local.stop_stream(stream_id):
            return True
        owner = await self._owner_of(stream_id)
        if owner is None:
            return False
        try:
            return bool(await self.node.rpc(owner, "stop_stream", stream_id))
        except HandoffFailed as exc:
            logger.warning("DELETE forwarded to %s failed: %s", owner.node, exc)
            return False


def _started_since(stream: dict[str, Any], since: datetime) -> bool:
    started = stream.get("started_at")
    if isinstance(started, datetime):
        return started >= since
    if isinstance(started, str) and started:
        try:
            return datetime.fromisoformat(started.replace("Z", "+00:00")) >= since
        except ValueError:
            return True
    return True
