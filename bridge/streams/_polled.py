"""A leg's reader in poll mode: messages handled inside the process-wide poller's wake-up.

``transports.Poller`` says why (one wake-up for every ready socket instead of a task
switch and an epoll re-arm per message). Here the reader task registers its pipe, sleeps
until the pipe needs it, and lets the poller call ``handle`` for each message inline.
The task wakes only for what a synchronous read cannot do (``read_ready`` returns
None): a close frame, EOF, an error, messages queued by an earlier ``receive()``. The
reader then does one ``await pipe.receive()`` as in task mode, and comes back.

Everything ``handle`` raises is re-raised in the reader task, so a reader's error
handling is the same in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ..dialects import Message
from ..transports import Poller, current_poller

__all__ = ["poller_for", "serve_polled"]


def poller_for(pipe: Any) -> Poller | None:
    """The current poller if ``pipe`` can be read in poll mode, else None."""
    poller = current_poller()
    if poller is None or getattr(pipe, "read_ready", None) is None or pipe.fileno() < 0:
        return None
    return poller


async def serve_polled(pipe: Any, poller: Poller, handle: Callable[[Message], bool]) -> bool:
    """Read ``pipe`` through ``poller``, calling ``handle(message)`` for each message.

    Returns True as soon as ``handle`` returns True (the reader is done), False when the
    pipe needs ``await pipe.receive()`` (then call again). Cancellation ends the
    registration at once, like cancelling a ``receive()``.
    """
    read_ready: Callable[[], list[Message] | None] = pipe.read_ready

    def pump() -> bool | None:
        messages = read_ready()
        if messages is None:
            return False
        for message in messages:
            if handle(message):
                return True
        return None

    # What is already there first (and whether the pipe can be polled at all now).
    outcome = pump()
    if outcome is not None:
        return outcome
    fd = pipe.fileno()
    if fd < 0:
        return False  # closed meanwhile: receive() says how
    wake = trio.Event()
    result: list[bool] = []
    failure: list[BaseException] = []

    def on_readable() -> None:
        if wake.is_set():
            return  # the task is on its way; it unregisters
        try:
            outcome = pump()
        except BaseException as exc:  # re-raised in the reader task, not the poller's
            failure.append(exc)
            wake.set()
            return
        if outcome is not None:
            result.append(outcome)
            wake.set()

    def on_close() -> None:
        result.append(False)  # receive() reports how it closed
        wake.set()

    pipe.poll_wake = on_close
    try:
        with poller.register(fd, on_readable):
            await wake.wait()
    finally:
        pipe.poll_wake = None
    if failure:
        raise failure[0]
    return result[0]
