"""The Redis link: one ``coredis`` client, its health, and the key layout.

coredis 6 runs on Trio through anyio (checked under ``trio.run`` in the tests, against a
real ``redis-server``). Every call goes through :meth:`RedisLink.call`, which turns any
client error into ``ClusterUnavailable`` and keeps ``up``/``up_since`` current, so the
rest of the package has one failure to handle and one place that knows whether Redis
answered lately.

Keys (``P`` is ``[cluster] key_prefix``; a standalone Redis or Sentinel, not Redis
Cluster: the scripts read keys they derive)::

    P:node:<node>        string  the node's lease (JSON NodeInfo), PX = lease
    P:nodes              set     every node that registered and was not cleaned up
    P:streams:<node>     hash    stream id -> StreamEntry (JSON) of that node's live streams
    P:ver:<node>         int     bumped whenever P:streams:<node> changes (listing cache)
    P:owner:<stream>     string  owner node; "ended:<node>" for ended_ttl after the end
    P:resume:<sha256>    string  stream id, by carrier resume key (route, call, stream)
    P:dropped:<stream>   string  who ended an orphaned stream (SET NX: exactly once)
    P:takeover:<node>    string  the survivor that cleans up a dead node (SET NX PX)
    P:events:<node>      stream  the node's events, consumer group "deliver"
    P:events-failed      stream  events given up on (capped), for inspection
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import coredis
import coredis.exceptions
import trio

from .._errors import ClusterUnavailable

__all__ = ["Keys", "RedisLink"]

logger = logging.getLogger("bridge.cluster")

T = TypeVar("T")


@attrs.frozen(slots=True)
class Keys:
    prefix: str

    def node(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    def streams(self, node: str) -> str:
        return f"{self.prefix}:streams:{node}"

    def ver(self, node: str) -> str:
        return f"{self.prefix}:ver:{node}"

    def owner(self, stream_id: str) -> str:
        return f"{self.prefix}:owner:{stream_id}"

    def resume(self, digest: str) -> str:
        return f"{self.prefix}:resume:{digest}"

    def dropped(self, stream_id: str) -> str:
        return f"{self.prefix}:dropped:{stream_id}"

    def takeover(self, node: str) -> str:
        return f"{self.prefix}:takeover:{node}"

    def events(self, node: str) -> str:
        return f"{self.prefix}:events:{node}"

    @property
    def failed(self) -> str:
        return f"{self.prefix}:events-failed"


@attrs.define(eq=False)
class RedisLink:
    """The cluster's Redis client and what it knows of Redis's health."""

    url: str
    client: coredis.Redis[bytes] = attrs.field(init=False)
    #: Redis answered the last call.
    up: bool = attrs.field(init=False, default=False)
    #: Trio time since which every call succeeded (inf while down).
    up_since: float = attrs.field(init=False, default=math.inf)
    errors: int = attrs.field(init=False, default=0)
    #: Called with True/False on every change of ``up`` (metrics, log lines).
    on_change: Callable[[bool], None] | None = None
    _last_error: str = attrs.field(init=False, default="")

    def __attrs_post_init__(self) -> None:
        self.client = coredis.Redis.from_url(
            self.url,
            decode_responses=False,
            connect_timeout=2.0,
            stream_timeout=5.0,
        )

    def up_for(self) -> float:
        """Seconds Redis has answered without a failure (0 while down)."""
        if not self.up:
            return 0.0
        return max(0.0, trio.current_time() - self.up_since)

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation; any failure becomes ``ClusterUnavailable``."""
        try:
            result = await fn()
        except (coredis.exceptions.RedisError, OSError) as exc:
            self._failed(what, exc)
            raise ClusterUnavailable(f"redis {what}: {exc}") from exc
        if not self.up:
            self.up = True
            self.up_since = trio.current_time()
            if self._last_error:
                logger.warning("redis is reachable again", extra={"redis": _safe(self.url)})
            if self.on_change is not None:
                self.on_change(True)
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        was_up = self.up
        self.up = False
        self.up_since = math.inf
        message = f"{type(exc).__name__}: {exc}"
        if was_up or not self._last_error:
            logger.error(
                "redis unreachable (%s): %s; live calls continue, cross-process resume and "
                "event hand-over wait for it",
                what,
                message,
                extra={"redis": _safe(self.url)},
            )
            if self.on_change is not None:
                self.on_change(False)
        self._last_error = message

    async def ping(self) -> None:
        await self.call("ping", self.client.ping)

    def script(self, text: str) -> Any:
        return self.client.register_script(text)


def _safe(url: str) -> str:
    """The URL without a password, for log lines."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://<redacted>@{rest.rpartition('@')[2]}"
    return url
