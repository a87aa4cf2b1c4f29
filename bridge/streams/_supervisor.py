"""The reconnect supervisor of a stream's app leg, and the :class:`RetryPolicy` it follows.

ARCHITECTURE.md, "Reliability policy": an app leg that cannot be reached, or drops, is
tried again ``retries`` times with a doubling backoff; after the last failed attempt the
stream ends with ``connection_error`` (``DroppedStream``). A connection that comes up
starts the count again, so every outage mid-call gets the same chances as the first
connect. While it is down the call goes on: the caller hears silence or the hold sound
and its audio waits in the uplink buffer for the replay.

* :class:`RetryPolicy` is pure (no Trio): the waits between attempts and when to give up,
  as numbers that a test reads without running anything.
* :class:`AppSupervisor` is the stream's task that owns the app leg (ARCHITECTURE.md,
  "The nursery tree")::

      reconnect supervisor      AppSupervisor.run: attempts, backoff, the outcome
      └── app connection        one nursery per attempt (_run_connection)
          ├── app reader        conn.serve_reader(stream): the stream's on_app_event
          └── app writer        conn.serve_writer(stream._drain_uplink): the replay

It is a part of the ``Stream``, kept in its own module: it drives the stream's
bookkeeping (state, event log, lifecycle events, counters) and sets ``stream._app``, the
one attribute the per-frame paths read to know whether the app leg is up. It never
touches a frame itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from .._errors import ConnectionClosed, DialectError, FramingError, TransportError
from ..dialects import Start, Stop
from ._legs import AppConnection
from ._lifecycle import StartStream, StreamState

if TYPE_CHECKING:
    from ._stream import Stream

__all__ = ["AppSupervisor", "RetryPolicy"]

# The stream's logger: these lines are the stream's, as they always were.
logger = logging.getLogger("bridge.streams")


@attrs.frozen(slots=True)
class RetryPolicy:
    """After a failed app-leg attempt: wait, and try again, ``retries`` times.

    The first retry waits ``backoff_s``, each later one ``factor`` times longer than the
    one before. ``retries = 2`` (the default) is three attempts in all.
    """

    retries: int = 2
    backoff_s: float = 0.5
    factor: float = 2.0

    def __attrs_post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, not {self.retries}")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s must not be negative, not {self.backoff_s}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")

    @property
    def attempts(self) -> int:
        """Attempts in all: the first and every retry."""
        return self.retries + 1

    def delays(self) -> tuple[float, ...]:
        """The wait before each retry, in order (``retries`` of them)."""
        out: list[float] = []
        delay = self.backoff_s
        for _ in range(self.retries):
            out.append(delay)
            delay *= self.factor
        return tuple(out)

    def delay_after(self, failures: int) -> float | None:
        """The wait after the ``failures``-th failed attempt in a row (1 for the first),
        or None: that was the last attempt, give up."""
        if failures < 1:
            raise ValueError(f"failures counts from 1, not {failures}")
        if failures > self.retries:
            return None
        delay = self.backoff_s
        for _ in range(failures - 1):
            delay *= self.factor
        return delay


@attrs.define(slots=True, eq=False)
class AppSupervisor:
    """Owns ``stream``'s app leg for the life of the stream: ``await run()`` in the
    stream's nursery; it returns once the stream is ending (or has to end)."""

    stream: Stream
    policy: RetryPolicy
    #: The app leg has been up once: a later connection is a resume (``Start.resumed``,
    #: no second ``StartStream``), and a final failure is "mid-stream".
    ever_up: bool = False

    async def run(self) -> None:
        """The first attempt plus ``policy.retries`` more, with the policy's backoff, at
        initiation and again after every mid-stream loss."""
        stream = self.stream
        policy = self.policy
        failures = 0
        last_error = ""
        while True:
            failures += 1
            stream.attempts += 1
            stream.outage_attempts = failures
            stream._set_state(StreamState.CONNECTING)
            outcome: str | None = None
            try:
                async with stream.connector.open(stream.stream_id, stream.call_id) as conn:
                    failures = 0
                    try:
                        self._connected(conn)
                        outcome = await self._run_connection(conn)
                    finally:
                        stream._app = None
                        if stream.reason is not None:
                            # The stream is ending: the dialect's stop goes out before
                            # the close handshake that leaving this block performs.
                            try:
                                conn.send_event(Stop(stream.reason))
                            except (ConnectionClosed, TransportError):
                                pass
            except (TransportError, OSError) as exc:
                last_error = str(exc) or type(exc).__name__
                stream._note(
                    "connect_failed", {"attempt": stream.outage_attempts, "error": last_error}
                )
                logger.info(
                    "app connect attempt %d failed: %s",
                    stream.outage_attempts,
                    last_error,
                    extra={"stream_id": stream.stream_id, "route": stream.route},
                )
                delay = policy.delay_after(failures)
                if delay is None:
                    when = "mid-stream" if self.ever_up else "at initiation"
                    stream.end(
                        "connection_error",
                        f"app leg unreachable {when} after {failures} attempts: {last_error}",
                    )
                    return
                await trio.sleep(delay)
                continue
            if outcome is None:
                stream.end("app_hangup")
                return
            stream.reconnects += 1
            stream._note("app_lost", {"error": outcome})
            logger.warning(
                "app leg lost: %s; reconnecting",
                outcome,
                extra={"stream_id": stream.stream_id, "route": stream.route},
            )

    def _connected(self, conn: AppConnection) -> None:
        """The app leg is up: the per-frame paths may use it, the app gets its start
        (a resume says so, with how much buffered audio follows), the replay begins."""
        stream = self.stream
        resumed = self.ever_up
        replayed_ms = stream._uplink.fill_ms
        stream._app = conn
        stream._set_state(StreamState.OPEN)
        conn.send_event(
            Start(
                stream_id=stream.stream_id,
                call_id=stream.call_id,
                sample_rate=stream.settings.app_sample_rate,
                encoding="L16",
                metadata=stream.call.metadata(),
                resumed=resumed,
                replayed_ms=replayed_ms,
            )
        )
        if resumed:
            stream._note("resumed", {"replayed_ms": replayed_ms})
        else:
            self.ever_up = True
            stream._emit(StartStream())
        stream._set_state(StreamState.STREAMING)
        stream._drain_uplink()

    async def _run_connection(self, conn: AppConnection) -> str | None:
        """Run one connection's reader and writer. None = a normal end (the app hung up,
        or the stream is ending); otherwise the failure, and the supervisor reconnects."""
        stream = self.stream
        failure: list[str] = []

        async def reader(cancel: trio.CancelScope) -> None:
            try:
                await conn.serve_reader(stream)
            except (DialectError, FramingError) as exc:
                # PROTOCOLS.md §0: malformed input from the app ends that connection;
                # the supervisor then reconnects.
                kind = exc.kind if isinstance(exc, FramingError) else "protocol_error"
                stream._bad_input("app", kind, str(exc))
                failure.append(f"app leg {kind.replace('_', ' ')}: {exc}")
            except (ConnectionClosed, TransportError) as exc:
                failure.append(str(exc) or type(exc).__name__)
            cancel.cancel()

        async def writer(cancel: trio.CancelScope) -> None:
            try:
                await conn.serve_writer(stream._drain_uplink)
            except (ConnectionClosed, TransportError) as exc:
                failure.append(str(exc) or type(exc).__name__)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            nursery.start_soon(writer, nursery.cancel_scope)
        return failure[0] if failure else None
