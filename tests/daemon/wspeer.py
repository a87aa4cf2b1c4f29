"""An independent WebSocket peer for call-leg tests: the ``websockets`` library's own
threaded client, written to a platform's documented protocol, sharing no code with
bridge's dialects or transports.

The peer runs its reader in a thread and records what arrives (with ``time.monotonic``
times); a Trio test drives it through ``trio.to_thread.run_sync`` and polls what it
recorded with :meth:`WsPeer.wait_for`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol


class WsPeer:
    def __init__(self, url: str, subprotocols: Sequence[str] = ()) -> None:
        self.url = url
        self.subprotocols = [Subprotocol(s) for s in subprotocols]
        self.received: list[tuple[float, str | bytes]] = []
        self.close_code: int | None = None
        self.closed = threading.Event()
        self._ws: ClientConnection | None = None
        self._reader: threading.Thread | None = None

    # ---------------------------------------------------------------- blocking (threads)

    def open(self) -> None:
        # As Asterisk does: no extensions offered, no proxy, no compression.
        connection = connect(
            self.url,
            subprotocols=self.subprotocols or None,
            compression=None,
            proxy=None,
            open_timeout=5,
            close_timeout=2,
            ping_interval=None,
        )
        assert isinstance(connection, ClientConnection)
        # The connection is closed in close(), not by a with block around the test.
        self._ws = connection.__enter__()
        self._reader = threading.Thread(target=self._read, name="wspeer", daemon=True)
        self._reader.start()

    @property
    def subprotocol(self) -> str | None:
        assert self._ws is not None
        return self._ws.subprotocol

    def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            for message in ws:
                self.received.append((time.monotonic(), message))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    def send(self, message: str | bytes) -> None:
        assert self._ws is not None
        self._ws.send(message)

    def send_paced(self, messages: Sequence[str | bytes], interval_s: float) -> None:
        """One message every ``interval_s``, on an absolute grid (as a media server does)."""
        start = time.monotonic()
        for i, message in enumerate(messages):
            delay = start + i * interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send(message)

    def close(self, code: int = 1000) -> None:
        if self._ws is not None:
            self._ws.close(code)
        if self._reader is not None:
            self._reader.join(5)

    # ---------------------------------------------------------------- queries

    def texts(self) -> list[str]:
        return [m for _, m in self.received if isinstance(m, str)]

    def binary(self) -> list[bytes]:
        return [m for _, m in self.received if isinstance(m, bytes)]

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 5.0) -> None:
        with trio.fail_after(timeout_s):
            while not predicate():
                await trio.sleep(0.01)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)
