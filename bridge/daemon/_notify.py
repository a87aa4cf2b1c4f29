"""sd_notify: tell systemd that we are ready, alive, reloading or stopping.

The protocol (``man sd_notify``) is one datagram of ``KEY=VALUE`` lines sent to the
``AF_UNIX``/``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET``. A leading ``@`` names a
socket in Linux's abstract namespace (the ``@`` becomes a NUL byte).

We implement it directly instead of depending on libsystemd: it is a dozen lines, and
the sends must never block the event loop. The socket is non-blocking, and every
failure (no listener, full receive queue, socket gone after a systemd re-exec) is
swallowed and logged once at debug level: losing a notification is always better than
stalling 20 ms audio ticks or crashing the daemon over bookkeeping.

``serve_watchdog`` pings ``WATCHDOG=1`` *from the Trio event loop*, on purpose: if the
loop wedges (a blocking call, a runaway CPU loop), the pings stop and systemd restarts
the service after ``WatchdogSec``. A ping from a helper thread would hide exactly the
failure the watchdog exists to catch.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import attrs
import trio

__all__ = ["SdNotifier", "serve_watchdog"]

logger = logging.getLogger("bridge.daemon.notify")


def _socket_address(value: str) -> str | None:
    """The sendto() address for a ``$NOTIFY_SOCKET`` value, or None if unsupported."""
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte, the rest is the name (not NUL-terminated).
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd ≥ 254 also speaks "vsock:CID:PORT"; we never run inside such a VM.
    return None


def _positive_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


@attrs.define(eq=False)
class SdNotifier:
    """A sender of sd_notify messages; a no-op when ``address`` is None.

    Build it with :meth:`from_environ`. Every send method is synchronous and
    non-blocking, so it is safe to call from any Trio task (and from signal-handling
    code) without a checkpoint.
    """

    #: The sendto() address (``"\\0name"`` for abstract sockets); None disables sending.
    address: str | None = None
    #: ``$WATCHDOG_USEC`` as an int, if set and positive.
    watchdog_usec: int | None = None
    #: ``$WATCHDOG_PID`` as an int, if set; the watchdog is meant for that pid only.
    watchdog_pid: int | None = None
    _sock: socket.socket | None = attrs.field(default=None, init=False, repr=False)
    # True after a failed send was logged; reset by the next successful send, so a
    # persistent failure logs one line instead of one every watchdog interval.
    _failing: bool = attrs.field(default=False, init=False, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> SdNotifier:
        """A notifier for ``$NOTIFY_SOCKET``; disabled when it is unset or unusable."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            logger.debug("unsupported NOTIFY_SOCKET %r; sd_notify disabled", raw)
        return cls(
            address=address,
            watchdog_usec=_positive_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True if it was handed to the kernel.

        Values may not contain newlines (they would end the field); any are replaced
        with spaces.
        """
        if self.address is None or not fields:
            return False
        payload = "".join(
            f"{key}={str(value).replace(chr(10), ' ')}\n" for key, value in fields.items()
        ).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            # sendto() every time rather than connect() once: systemd re-creates the
            # notify socket on daemon-reexec, and a connected socket would stay dead.
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            # BlockingIOError (receiver's queue full), FileNotFoundError,
            # ConnectionRefusedError, ...: drop the message, never block or raise.
            if not self._failing:
                self._failing = True
                logger.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: listeners are bound, the service is up (ends systemd's start job)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """``RELOADING=1``: a SIGHUP reload started; send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd ≥ 253) and
        harmless before it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def status(self, text: str) -> bool:
        """``STATUS=…``: the free-form line ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: draining started (systemd then waits up to ``TimeoutStopSec``)."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive ping."""
        return self.notify(WATCHDOG=1)

    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of ``$WATCHDOG_USEC`` (systemd's advice), else None.

        None when the watchdog is off, or when ``$WATCHDOG_PID`` names another process
        (the variables were inherited from a parent that is the watched one).
        """
        if self.address is None or self.watchdog_usec is None:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def serve_watchdog(
    notifier: SdNotifier,
    status_fn: Callable[[], str] | None = None,
    *,
    status_interval_s: float = 5.0,
) -> None:
    """Ping the watchdog and refresh ``STATUS=`` until cancelled; never returns.

    ``WATCHDOG=1`` goes out every :meth:`SdNotifier.watchdog_interval_s` (if the
    watchdog is enabled), ``STATUS=<status_fn()>`` every ``status_interval_s`` when the
    text changed. With nothing to do it just sleeps, so callers can always start it.
    """
    if status_interval_s <= 0:
        raise ValueError("status_interval_s must be positive")
    watchdog_interval = notifier.watchdog_interval_s()
    if not notifier.enabled or (watchdog_interval is None and status_fn is None):
        await trio.sleep_forever()
    inf = float("inf")
    now = trio.current_time()
    next_ping = now if watchdog_interval is not None else inf
    next_status = now if status_fn is not None else inf
    last_status: str | None = None
    while True:
        await trio.sleep_until(min(next_ping, next_status))
        now = trio.current_time()
        if watchdog_interval is not None and now >= next_ping:
            notifier.watchdog()
            # After a stall, restart the grid from now instead of sending a burst of
            # catch-up pings: one ping proves liveness as well as ten.
            next_ping += watchdog_interval
            if next_ping <= now:
                next_ping = now + watchdog_interval
        if status_fn is not None and now >= next_status:
            try:
                text = status_fn()
            except Exception:
                # Status is decoration; a bug in it must not take the watchdog down.
                logger.debug("status_fn failed", exc_info=True)
            else:
                if text != last_status and notifier.status(text):
                    last_status = text
            next_status += status_interval_s
            if next_status <= now:
                next_status = now + status_interval_s
