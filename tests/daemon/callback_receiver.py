"""A real HTTP/1.1 status-callback receiver for tests and benches.

A small Trio + h11 server on 127.0.0.1 that records every request (headers, raw body,
parsed JSON) and answers as told::

    async with open_callback_receiver() as rx:
        rx.url                      # http://127.0.0.1:<port>/events
        rx.respond(500)             # every request from now on gets 500
        rx.respond(429, retry_after=0.1)
        rx.respond("hang")          # read the request, never answer
        rx.responder = fn           # fn(request) -> status | (status, headers) | "hang"
        rx.latency = fn             # fn(request) -> seconds to wait before answering
        await rx.down()             # stop listening AND drop open connections: refused
        await rx.up()               # listening again, same port
        await rx.wait_for(lambda rx: len(rx.unique_ids()) >= 10)

Down really is "connection refused": the listening socket is closed while a second,
never-listening socket keeps the port bound (SO_REUSEPORT), so the port cannot be taken
by someone else and ``up()`` gets the same URL back. ``open_callback_receiver(up=False)``
starts in that state, which is how a test reserves a dead-but-later-live URL.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import h11
import trio

__all__ = ["CallbackReceiver", "ReceivedRequest", "open_callback_receiver"]

Answer = int | tuple[int, dict[str, str]] | str  # str: "hang"


@attrs.frozen
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    received_at: float  # trio.current_time()
    status: int | None  # what we answered (None: hung)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers.get("x-bridge-event-id", "")


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class CallbackReceiver:
    def __init__(self, nursery: trio.Nursery, path: str = "/events") -> None:
        self._nursery = nursery
        # Holds the port for the receiver's lifetime; never listens, so while no
        # listening socket exists a connect gets ECONNREFUSED.
        self._holder = _bind(0)
        self.port: int = self._holder.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.requests: list[ReceivedRequest] = []
        self.responder: Callable[[ReceivedRequest], Answer] = lambda _req: 200
        # Seconds to wait before answering (after recording the request): lets a test
        # make a receiver that processes a request but answers after the sender gave up.
        self.latency: Callable[[ReceivedRequest], float] = lambda _req: 0.0
        self._session: trio.CancelScope | None = None
        self._session_done = trio.Event()
        self._changed = trio.Event()

    # -- control --------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self._session is not None

    def respond(
        self, answer: int | str, *, retry_after: float | None = None, times: int | None = None
    ) -> None:
        """Answer every request (or the next ``times`` ones, then 200) with ``answer``."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        remaining = [times]

        def responder(_req: ReceivedRequest) -> Answer:
            if remaining[0] is not None:
                if remaining[0] <= 0:
                    return 200
                remaining[0] -= 1
            if answer == "hang":
                return "hang"
            return (int(answer), headers)

        self.responder = responder

    async def up(self) -> None:
        if self._session is not None:
            return
        sock = trio.socket.from_stdlib_socket(_bind(self.port))
        sock.listen(128)
        self._session_done = trio.Event()
        self._session = await self._nursery.start(self._serve, trio.SocketListener(sock))

    async def down(self) -> None:
        """Close the listening socket and every open connection, and wait until done."""
        if self._session is None:
            return
        self._session.cancel()
        await self._session_done.wait()
        self._session = None

    async def aclose(self) -> None:
        await self.down()
        self._holder.close()

    # -- inspection -------------------------------------------------------------------

    def event_ids(self) -> list[str]:
        """Event ids of every request answered 2xx, in arrival order (duplicates kept)."""
        return [r.event_id for r in self.requests if r.status is not None and r.status < 300]

    def unique_ids(self) -> set[str]:
        return set(self.event_ids())

    def delivered_bodies(self) -> list[dict[str, Any]]:
        """Parsed bodies of 2xx-answered requests, first delivery of each event only."""
        seen: set[str] = set()
        out = []
        for r in self.requests:
            if r.status is not None and r.status < 300 and r.event_id not in seen:
                seen.add(r.event_id)
                out.append(r.json)
        return out

    async def wait_for(self, predicate: Callable[[CallbackReceiver], bool]) -> None:
        """Wait until ``predicate(self)`` holds (re-checked on every request). Wrap in
        ``trio.fail_after``."""
        while not predicate(self):
            await self._changed.wait()

    # -- serving -----------------------------------------------------------------------

    async def _serve(
        self,
        listener: trio.SocketListener,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                async with listener, trio.open_nursery() as nursery:
                    while True:
                        stream = await listener.accept()
                        nursery.start_soon(self._connection, stream)
        finally:
            self._session_done.set()

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                method, path, headers, body = request
                rec = ReceivedRequest(method, path, headers, body, trio.current_time(), None)
                answer = self.responder(rec)
                if isinstance(answer, str):  # "hang": keep the request, never answer
                    self._record(rec)
                    await trio.sleep_forever()
                status, extra = (answer, {}) if isinstance(answer, int) else answer
                rec = attrs.evolve(rec, status=status)
                self._record(rec)
                delay = self.latency(rec)
                if delay > 0:
                    await trio.sleep(delay)
                payload = b'{"ok":true}' if status < 300 else f"error {status}".encode()
                out_headers = [
                    ("Content-Type", "application/json" if status < 300 else "text/plain"),
                    ("Content-Length", str(len(payload))),
                    *extra.items(),
                ]
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=out_headers))
                )
                await stream.send_all(conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.aclose_forcefully(stream)

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[str, str, dict[str, str], bytes] | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)  # b"" = EOF
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                return head.method.decode(), head.target.decode(), headers, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    def _record(self, rec: ReceivedRequest) -> None:
        self.requests.append(rec)
        changed, self._changed = self._changed, trio.Event()
        changed.set()


@contextlib.asynccontextmanager
async def open_callback_receiver(
    *, up: bool = True, path: str = "/events"
) -> AsyncIterator[CallbackReceiver]:
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        rx = CallbackReceiver(nursery, path)
        try:
            if up:
                await rx.up()
            yield rx
        except BaseException as exc:
            # Re-raised outside the nursery: a failing assertion in the test body should
            # show as itself, not wrapped in an ExceptionGroup.
            body_error = exc
        finally:
            with trio.CancelScope(shield=True):
                await rx.aclose()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
