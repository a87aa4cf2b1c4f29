"""Listener supervision: nothing a listener does can end the daemon.

Every listener (the admin API, AudioSocket, the carrier WebSocket, the RTP port pool)
runs under a :class:`ListenerSupervisor` in the daemon nursery::

    daemon nursery
    └── ListenerSupervisor "admin"       owns the bound socket for the daemon's lifetime
        └── attempt nursery               a failure stops here: logged, counted, restarted
            └── the listener's serve loop, on a duplicate of the bound socket

Binding happens once, before the supervisor starts: a port in use still fails start-up,
with a :class:`~bridge.ListenerError` naming the listener and the address. After that,
an exception out of a serve loop is logged (at once with its traceback the first time
each kind is seen; a repeat at most once a minute, saying how many were held back), counted in
``bridge_listener_failures_total{listener}``, and the serve loop starts again after a
backoff (0.1 s doubling to 10 s; back to 0.1 s after 30 s of health) on the socket the
supervisor still holds: the address stays bound, connections waiting in the accept
backlog are kept, and nothing else can take the port meanwhile.

Each attempt gets ``socket.dup()`` of the bound sockets, because the serve loops own and
close the listeners they are given (``trio.serve_listeners`` does): closing the duplicate
leaves the original listening.

Streams are not in a listener's scope (they run in the streams nursery), so a
listener's restart does not touch a call that is already up; connections still in their
handshake inside that listener are closed with it. (The carrier WebSocket listener keeps
each carrier connection's task in its own nursery, so a failure of that listener does cut
its carrier calls; AudioSocket and RTP calls are not affected.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import attrs
import trio

from .._errors import ListenerError

__all__ = ["ListenerSupervisor", "bind_listener", "format_address"]

logger = logging.getLogger("bridge.daemon.listeners")

#: ``serve(listeners, task_status=...)``: serve on ``listeners`` (and own them) until
#: cancelled, calling ``task_status.started()`` once serving.
ServeFn = Callable[..., Awaitable[object]]


def format_address(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def bind_listener(
    name: str, address: str, bind: Callable[[], Awaitable[list[trio.SocketListener]]]
) -> list[trio.SocketListener]:
    """``await bind()``, with a failure named after the listener and its address."""
    try:
        return await bind()
    except OSError as exc:
        raise ListenerError(name, address, exc) from exc


def _duplicate(listener: trio.SocketListener) -> trio.SocketListener:
    return trio.SocketListener(listener.socket.dup())


def _kind(exc: BaseException) -> str:
    """What a failure is, for "have we shown this traceback yet"."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "group:" + ",".join(sorted({_kind(e) for e in exc.exceptions}))
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


@attrs.define(eq=False)
class ListenerSupervisor:
    """Runs one listener's serve loop and restarts it whenever it fails."""

    name: str
    #: For log lines: ``127.0.0.1:9092``.
    address: str
    serve: ServeFn
    #: The bound sockets; the supervisor closes them when it ends.
    listeners: Sequence[trio.SocketListener] = ()
    #: Called once per contained failure (the daemon counts it in Prometheus).
    on_failure: Callable[[], object] = lambda: None
    min_backoff_s: float = 0.1
    max_backoff_s: float = 10.0
    #: An attempt that served this long resets the backoff.
    healthy_after_s: float = 30.0
    #: At most one ERROR line per this interval after the first.
    log_interval_s: float = 60.0
    failures: int = 0
    restarts: int = 0
    #: Set while an attempt is serving (tests wait on it after a failure).
    serving: bool = False
    _last_logged: float | None = None
    _held_back: int = 0
    _kinds_shown: set[str] = attrs.field(factory=set)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        backoff = self.min_backoff_s
        reported = False
        try:
            while True:
                began = trio.current_time()
                failure: BaseException | None = None
                duplicates: list[trio.SocketListener] = []
                try:
                    duplicates = [_duplicate(listener) for listener in self.listeners]
                    async with trio.open_nursery() as nursery:
                        await nursery.start(self.serve, duplicates)
                        self.serving = True
                        if not reported:
                            reported = True
                            task_status.started()
                    failure = RuntimeError(f"the {self.name} serve loop returned")
                except* Exception as group:
                    # Only Exceptions are ours to contain: a Cancelled (the daemon is
                    # stopping) in the same group goes on up, unhandled by this clause.
                    failure = group.exceptions[0] if len(group.exceptions) == 1 else group
                finally:
                    self.serving = False
                    for duplicate in duplicates:
                        duplicate.socket.close()
                assert failure is not None
                if not reported:
                    # Start-up: the daemon must not report READY without this listener.
                    raise ListenerError(self.name, self.address, failure) from failure
                if trio.current_time() - began >= self.healthy_after_s:
                    backoff = self.min_backoff_s
                self._failed(failure, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                self.restarts += 1
        finally:
            for listener in self.listeners:
                listener.socket.close()

    def _failed(self, failure: BaseException, backoff_s: float) -> None:
        self.failures += 1
        self.on_failure()
        now = trio.current_time()
        extra = {"listener": self.name, "address": self.address, "failures": self.failures}
        kind = _kind(failure)
        # A kind of failure not seen before is logged at once, with its traceback (at
        # most 32 kinds); a repeat is logged at most once per log_interval_s.
        first_of_kind = kind not in self._kinds_shown and len(self._kinds_shown) < 32
        throttled = self._last_logged is not None and now - self._last_logged < self.log_interval_s
        if throttled and not first_of_kind:
            self._held_back += 1
            logger.debug(
                "%s listener %s failed again (%r); serving again in %gs",
                self.name,
                self.address,
                failure,
                backoff_s,
                extra=extra,
            )
            return
        self._kinds_shown.add(kind)
        held, self._held_back = self._held_back, 0
        self._last_logged = now
        logger.error(
            "%s listener %s failed%s: %r; serving again in %gs on the same socket",
            self.name,
            self.address,
            f" ({held} more failures since the last line)" if held else "",
            failure,
            backoff_s,
            exc_info=failure if first_of_kind else None,
            extra=extra,
        )
