"""The internal cluster listener and its client: carrying a connection to the process
that owns its stream, and forwarding admin requests to it.

**Same host** (the owner's lease shows the same boot id and a Unix socket): the
connection's descriptor is passed over the owner's Unix socket (``SCM_RIGHTS``) with the
bytes already read from it; the owner continues the very same TCP connection. The
process it landed on closes its copy: **zero extra hops** on the audio path.

**Across machines**: the process it landed on opens a TCP connection to the owner's
``advertise`` address, sends the same request, and from the owner's answer on relays
the carrier's bytes unchanged both ways (one extra hop; the WebSocket framing runs end
to end between the carrier and the owner).

Either way the request is authenticated (``_wire``: HMAC with the cluster secret over a
fresh challenge), the original peer address travels with it, and the route's own
authentication was checked by the process it landed on before anything was handed over.
The owner answers before it adopts, so a failed hand-off leaves the connection with the
process it landed on (which then closes it cleanly or, if the owner died, continues it).

Limits: at most ``max_connections`` cluster connections at once (more are closed at
accept); the request must arrive within ``exchange_timeout_s`` of the accept; frames are
bounded (``_wire``). Every refusal is counted (``bridge_cluster_auth_failures_total``,
``bridge_cluster_handoffs_total{outcome}``) and logged.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import msgspec
import trio

from .._errors import HandoffFailed
from ._registry import NodeInfo
from ._wire import (
    _REQUEST_LABEL,
    _RESPONSE_LABEL,
    CHALLENGE_BYTES,
    FrameParser,
    Handoff,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_frame,
    new_nonce,
    read_exact,
    read_frame,
    send_all,
)

__all__ = ["ClusterClient", "ClusterServer"]

logger = logging.getLogger("bridge.cluster")

_RELAY_BYTES = 65536

#: adopt(handoff, socket, bytes already read): continue a carried connection here;
#: returns when done with it.
AdoptFn = Callable[[Handoff, trio.socket.SocketType, bytes], Awaitable[None]]


def _enc_hook(obj: Any) -> Any:
    return str(obj)


_result_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def _jsonable(value: Any) -> Any:
    """Admin results hold datetimes: make them plain JSON before they are framed."""
    return msgspec.json.decode(_result_encoder.encode(value))


@attrs.define(eq=False)
class ClusterServer:
    """The internal listener: TCP on ``listen``, and a Unix socket in ``socket_dir``."""

    node_id: str
    secret: bytes
    adopt: AdoptFn
    backend: Any  # the local admin backend (get_stream, stop_stream, live_streams)
    metrics: Any
    listen: tuple[str, int]
    unix_path: str = ""
    exchange_timeout_s: float = 5.0
    max_connections: int = 256
    bound: tuple[str, int] = attrs.field(init=False, default=("", 0))
    _active: int = attrs.field(init=False, default=0)

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.listen[1], host=self.listen[0] or None)
        unix: trio.socket.SocketType | None = None
        if self.unix_path:
            unix = await self._bind_unix(self.unix_path)
        name = listeners[0].socket.getsockname()
        self.bound = (str(name[0]), int(name[1]))
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_tcp, listener, nursery)
                if unix is not None:
                    nursery.start_soon(self._accept_unix, unix, nursery)
                logger.info(
                    "cluster listener on %s:%d%s",
                    self.bound[0],
                    self.bound[1],
                    f" and {self.unix_path}" if unix is not None else "",
                )
                task_status.started(self.bound)
        finally:
            if unix is not None:
                unix.close()
                try:
                    os.unlink(self.unix_path)
                except OSError:
                    pass

    async def _bind_unix(self, path: str) -> trio.socket.SocketType | None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.unlink(path)  # a stale socket of a previous process with this node id
            except FileNotFoundError:
                pass
            await sock.bind(path)
            os.chmod(path, 0o660)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            logger.warning(
                "cluster: cannot listen on %s (%s); connections reach this process by TCP "
                "relay only",
                path,
                exc,
            )
            self.unix_path = ""
            return None
        return sock

    async def _accept_tcp(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.error("cluster listener: accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            self._admit(nursery, stream.socket, "tcp")

    async def _accept_unix(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, _ = await sock.accept()
            except OSError as exc:
                logger.error("cluster unix listener: accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            self._admit(nursery, conn, "unix")

    def _admit(self, nursery: trio.Nursery, sock: trio.socket.SocketType, via: str) -> None:
        if self._active >= self.max_connections:
            self.metrics.handoffs.labels(kind="any", via=via, outcome="busy").inc()
            sock.close()
            return
        self._active += 1
        nursery.start_soon(self._serve_one, sock, via)

    async def _serve_one(self, sock: trio.socket.SocketType, via: str) -> None:
        keep = False
        fds: list[int] = []
        try:
            challenge = new_nonce()
            with trio.move_on_after(self.exchange_timeout_s) as scope:
                await send_all(sock, challenge)
                parser = FrameParser(self.secret, _REQUEST_LABEL, challenge)
                body, payload, fds = await read_frame(sock, parser, want_fds=via == "unix")
                request = decode_request(body)
            if scope.cancelled_caught:
                logger.warning(
                    "cluster connection (%s): no request within %gs", via, self.exchange_timeout_s
                )
                return
            keep = await self._dispatch(sock, via, request, payload, fds)
            fds = []  # handed over (or closed) by _dispatch
        except HandoffFailed as exc:
            if "MAC" in str(exc):
                self.metrics.auth_failures.inc()
            logger.warning("cluster connection (%s) refused: %s", via, exc)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("cluster connection (%s) lost: %s", via, exc)
        except Exception:
            logger.exception("cluster connection (%s): internal error", via)
        finally:
            for fd in fds:
                os.close(fd)
            self._active -= 1
            if not keep:
                sock.close()

    async def _answer(
        self, sock: trio.socket.SocketType, request: Request, response: Response
    ) -> None:
        nonce = bytes.fromhex(request.nonce)
        with trio.fail_after(self.exchange_timeout_s):
            await send_all(sock, encode_frame(self.secret, _RESPONSE_LABEL, nonce, response))

    async def _dispatch(
        self,
        sock: trio.socket.SocketType,
        via: str,
        request: Request,
        payload: bytes,
        fds: list[int],
    ) -> bool:
        """Serve one request; True if ``sock`` itself was adopted (a relay)."""
        op = request.op
        if op != "handoff":
            for fd in fds:
                os.close(fd)
            try:
                result = await self._admin(request)
                response = Response(ok=True, result=_jsonable(result))
            except Exception as exc:
                logger.exception("cluster %s failed", op)
                response = Response(ok=False, error=f"{type(exc).__name__}: {exc}")
            await self._answer(sock, request, response)
            return False
        handoff = request.handoff
        if handoff is None:
            raise HandoffFailed("handoff request without its handoff")
        if request.mode == "fd":
            if len(fds) != 1:
                raise HandoffFailed(f"handoff by descriptor with {len(fds)} descriptors")
            carried = trio.socket.from_stdlib_socket(socket.socket(fileno=fds[0]))
            fds.clear()
            try:
                await self._answer(sock, request, Response(ok=True))
            except BaseException:
                carried.close()
                raise
            sock.close()
            self.metrics.handoffs.labels(kind=handoff.kind, via="fd", outcome="adopted").inc()
            logger.info(
                "connection carried here by descriptor",
                extra={
                    "stream_id": handoff.stream_id,
                    "from_node": handoff.via,
                    "peer": _peer(handoff),
                },
            )
            await self.adopt(handoff, carried, payload)
            return False
        for fd in fds:
            os.close(fd)
        fds.clear()
        await self._answer(sock, request, Response(ok=True))
        self.metrics.handoffs.labels(kind=handoff.kind, via="relay", outcome="adopted").inc()
        logger.info(
            "connection relayed here",
            extra={
                "stream_id": handoff.stream_id,
                "from_node": handoff.via,
                "peer": _peer(handoff),
            },
        )
        await self.adopt(handoff, sock, payload)
        return True

    async def _admin(self, request: Request) -> Any:
        backend = self.backend
        if request.op == "get_stream":
            return await backend.get_stream(request.stream_id)
        if request.op == "stop_stream":
            return await backend.stop_stream(request.stream_id)
        if request.op == "live_streams":
            return backend.live_streams()
        return {"node": self.node_id}


def _peer(handoff: Handoff) -> str:
    host, port = handoff.peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.define(eq=False)
class ClusterClient:
    node_id: str
    secret: bytes
    host: str
    metrics: Any
    #: False: never pass descriptors (this process has no socket_dir).
    use_unix: bool = True
    connect_timeout_s: float = 2.0
    exchange_timeout_s: float = 5.0

    def same_host(self, node: NodeInfo) -> bool:
        return self.use_unix and bool(node.unix) and node.host == self.host

    async def _connect(self, node: NodeInfo, unix: bool) -> trio.socket.SocketType:
        with trio.move_on_after(self.connect_timeout_s) as scope:
            if unix:
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    await sock.connect(node.unix)
                except BaseException:
                    sock.close()
                    raise
                return sock
            host, _, port = node.advertise.rpartition(":")
            stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return stream.socket
        assert scope.cancelled_caught
        raise HandoffFailed(
            f"cluster node {node.node} did not accept within {self.connect_timeout_s:g}s"
        )

    async def exchange(
        self,
        node: NodeInfo,
        request: Request,
        payload: bytes = b"",
        *,
        fd: int | None = None,
        unix: bool = False,
    ) -> tuple[Response, trio.socket.SocketType]:
        """One authenticated request; returns the answer and the still-open socket
        (the caller closes it, or relays over it)."""
        try:
            sock = await self._connect(node, unix)
        except OSError as exc:
            raise HandoffFailed(f"cannot reach cluster node {node.node}: {exc}") from exc
        try:
            with trio.move_on_after(self.exchange_timeout_s) as scope:
                challenge = await read_exact(sock, CHALLENGE_BYTES)
                await send_all(
                    sock, encode_frame(self.secret, _REQUEST_LABEL, challenge, request, payload), fd
                )
                parser = FrameParser(self.secret, _RESPONSE_LABEL, bytes.fromhex(request.nonce))
                body, _, _ = await read_frame(sock, parser)
                response = decode_response(body)
            if scope.cancelled_caught:
                raise HandoffFailed(
                    f"cluster node {node.node} did not answer in {self.exchange_timeout_s:g}s"
                )
        except OSError as exc:
            sock.close()
            raise HandoffFailed(f"cluster exchange with {node.node} failed: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        return response, sock

    async def rpc(self, node: NodeInfo, op: str, stream_id: str = "") -> Any:
        request = Request(op=op, nonce=new_nonce().hex(), node=self.node_id, stream_id=stream_id)  # type: ignore[arg-type]
        response, sock = await self.exchange(node, request, unix=self.same_host(node))
        sock.close()
        if not response.ok:
            raise HandoffFailed(f"cluster node {node.node}: {op} failed: {response.error}")
        return response.result

    async def hand_off(
        self, node: NodeInfo, handoff: Handoff, sock: trio.socket.SocketType, received: bytes
    ) -> str:
        """Carry ``sock`` (and the ``received`` bytes) to ``node``. Returns "fd" or
        "relay" (after the relay ended) once the owner took it; raises HandoffFailed if it
        did not (``sock`` is then still the caller's)."""
        nonce = new_nonce().hex()
        if self.same_host(node):
            request = Request(
                op="handoff", nonce=nonce, node=self.node_id, handoff=handoff, mode="fd"
            )
            try:
                response, link = await self.exchange(
                    node, request, received, fd=sock.fileno(), unix=True
                )
            except HandoffFailed as exc:
                logger.warning("descriptor hand-off to %s failed (%s); trying TCP", node.node, exc)
            else:
                link.close()
                if not response.ok:
                    raise HandoffFailed(f"cluster node {node.node} refused: {response.error}")
                sock.close()  # the owner holds its own copy now
                return "fd"
        request = Request(
            op="handoff", nonce=new_nonce().hex(), node=self.node_id, handoff=handoff, mode="relay"
        )
        response, link = await self.exchange(node, request, received)
        if not response.ok:
            link.close()
            raise HandoffFailed(f"cluster node {node.node} refused: {response.error}")
        await relay(sock, link)
        return "relay"


async def relay(a: trio.socket.SocketType, b: trio.socket.SocketType) -> None:
    """Copy bytes both ways until both directions ended (EOF is passed on as a
    half-close); an error on either side ends both. Closes both sockets.

    Straight on the descriptors (``os.read``/``os.write`` once the poller says the
    socket is readable): this is one extra hop of every frame of a relayed call, so it
    costs what the kernel costs and one scheduler wake-up, no stream abstractions."""

    async def pump(
        src: trio.socket.SocketType, dst: trio.socket.SocketType, cancel: trio.CancelScope
    ) -> None:
        rfd, wfd = src.fileno(), dst.fileno()
        try:
            while True:
                await trio.lowlevel.wait_readable(rfd)
                try:
                    data = os.read(rfd, _RELAY_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(wfd, view) :]
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(wfd)
        except OSError:
            cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, nursery.cancel_scope)
            nursery.start_soon(pump, b, a, nursery.cancel_scope)
    finally:
        a.close()
        b.close()
