"""One epoll for the media sockets of a process: a wake-up reads every ready socket.

PERFORMANCE.md, "Fewer syscalls per frame": a reader task that waits with Trio's
``wait_readable`` pays, per message, an ``epoll_ctl`` to re-arm its fd in Trio's epoll and
a park and a reschedule of its task. With one paced message per leg every 20 ms that is
most of the cost of a call-frame. Here each media socket is registered once
(level-triggered) in a private epoll; one task waits, through Trio, for *that* epoll's
fd to become readable, and then calls the callback of every ready socket inline: one
wake-up, one ``epoll_wait`` and one ``read`` per ready socket, however many there are.

A callback is synchronous and must not block: it reads what is there (the fd is
non-blocking) and handles it. Level-triggered means a callback that leaves data unread
is called again on the next round, and one that stops reading must unregister first.

Use: ``serve()`` runs in a nursery the owner holds (the daemon's, like the ticker), and
each reader task holds its registration as a context manager for exactly as long as it
reads in this mode::

    with poller.register(fd, on_readable):
        await done.wait()
"""

from __future__ import annotations

import contextvars
import logging
import select
from collections.abc import Callable

import attrs
import trio

__all__ = ["PollRegistration", "Poller", "current_poller", "use_poller"]

logger = logging.getLogger("bridge.transports")

#: Events per ``epoll_wait``: more stay ready and come in the next round.
MAX_EVENTS = 1024

_current: contextvars.ContextVar[Poller | None] = contextvars.ContextVar(
    "bridge_poller", default=None
)


def current_poller() -> Poller | None:
    """The poller readers in this task tree use, or None (each reader waits by itself)."""
    return _current.get()


def use_poller(poller: Poller | None) -> None:
    """Make ``poller`` current for this task and the tasks it starts from now on (Trio
    copies the context into each new task)."""
    _current.set(poller)


@attrs.define(slots=True, eq=False)
class PollRegistration:
    """One fd's registration; leaving the ``with`` block (or ``cancel()``) ends it."""

    fd: int
    _poller: Poller

    def cancel(self) -> None:
        self._poller._unregister(self.fd, self)

    def __enter__(self) -> PollRegistration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


@attrs.define(slots=True, eq=False)
class Poller:
    """The process-wide read poller. Run ``serve()`` in the owner's nursery."""

    _epoll: select.epoll = attrs.field(factory=select.epoll)
    _callbacks: dict[int, tuple[Callable[[], None], PollRegistration]] = attrs.field(
        factory=dict
    )
    _closed: bool = False
    #: Health figures: wake-ups, and callbacks run (their ratio is the batching).
    wakeups: int = 0
    dispatched: int = 0

    @property
    def registered(self) -> int:
        return len(self._callbacks)

    def register(self, fd: int, on_readable: Callable[[], None]) -> PollRegistration:
        """Call ``on_readable()`` whenever ``fd`` has data (or EOF, or an error)."""
        if self._closed:
            raise trio.ClosedResourceError("the poller is closed")
        registration = PollRegistration(fd, self)
        # EPOLLIN also reports EOF (a read returns b"") and, with EPOLLERR/EPOLLHUP that
        # epoll always reports, a reset: the callback's read sees each of them.
        if fd in self._callbacks:
            # Only possible if the old fd was closed while registered and its number
            # reused: closing dropped it from the epoll; the stale entry goes.
            del self._callbacks[fd]
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:
            self._epoll.modify(fd, select.EPOLLIN)
        self._callbacks[fd] = (on_readable, registration)
        return registration

    def _unregister(self, fd: int, registration: PollRegistration) -> None:
        entry = self._callbacks.get(fd)
        if entry is None or entry[1] is not registration:
            return  # already gone (or the fd number was reused by a newer registration)
        del self._callbacks[fd]
        if not self._closed:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # the fd was closed first: the kernel dropped it from the epoll

    async def serve(self) -> None:
        """Run forever: wait for the epoll, run the callback of every ready fd."""
        epfd = self._epoll.fileno()
        poll = self._epoll.poll
        callbacks = self._callbacks
        try:
            while True:
                await trio.lowlevel.wait_readable(epfd)
                events = poll(0, MAX_EVENTS)
                self.wakeups += 1
                for fd, _ in events:
                    entry = callbacks.get(fd)
                    if entry is None:
                        continue  # unregistered by an earlier callback of this round
                    self.dispatched += 1
                    try:
                        entry[0]()
                    except Exception:
                        # A callback reports its stream's errors to its own task; one
                        # that raises here is a bug. It must not stop every other call.
                        logger.exception("read callback failed; unregistering fd %d", fd)
                        self._unregister(fd, entry[1])
        finally:
            self._closed = True
            callbacks.clear()
            self._epoll.close()
