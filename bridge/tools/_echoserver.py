"""``bridge echo-server``: a standalone echo application for demos, tests and benchmarks.

::

    bridge echo-server [--listen 127.0.0.1:9000] [--encapsulation sln] [--codec pcmu]
                       [--drop-after N] [--stall-after N] [--reject STATUS]

A WebSocket server that plays the *app* role of one encapsulation (any the dialect
registry lists: ``sln``, ``audiosocket``, ``rtp``, ``twilio``, ``telnyx``, ``plivo``,
``asterisk-ws``, ``exotel``, ...) and sends every audio frame straight back, re-encoded
through the same dialect's ``send_audio``. It echoes a mark once (see
:meth:`EchoServer._echo`) and answers nothing else. Point a route's ``app.url`` at it to
have a real WebSocket app leg behind bridge, or dial it directly with ``bridge call
--transport sln``.

It is the far end of the headline benchmark, so it must never be what limits a
measurement (PERFORMANCE.md): one task per connection reads, decodes and echoes inline
with ``send_nowait`` (no channel, no second task per frame). A writer task is started
only if the kernel ever refuses a write, to flush the backlog.

Fault injection for chaos runs: ``--drop-after N`` aborts each connection after N audio
frames without a closing handshake (the peer sees 1006); ``--stall-after N`` stops
reading and echoing after N frames but keeps the socket open (TCP backpressure builds
up on the peer) until the peer goes away; ``--reject STATUS`` answers every upgrade
with that HTTP status.

In-process use (tests, benchmarks)::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_echo, EchoOptions(port=0, encapsulation=name))
        ... dial server.url ...
        nursery.cancel_scope.cancel()
"""

from __future__ import annotations

import argparse
import functools
import logging
import select
import signal
import sys
from collections.abc import Callable
from typing import Any, Final, Literal, NoReturn, cast, get_args

import attrs
import trio

from .._errors import ConnectionClosed, DialectError, TransportError, UnsupportedMessage
from ..dialects import (
    DEFAULT_ENCAPSULATION,
    AppParams,
    Audio,
    Dialect,
    Mark,
    Stop,
    cli_name,
    dialect,
    encapsulations,
)
from ..transports import (
    WebSocketConnection,
    WebSocketRequest,
    format_peer,
    parse_host_port,
    serve_websocket,
)
from ._args import at_least_1

__all__ = [
    "EchoOptions",
    "EchoServer",
    "EchoStats",
    "add_echo_server_parser",
    "serve_echo",
]

logger = logging.getLogger("bridge.echo")

EchoCodec = Literal["pcmu", "pcma", "l16"]
CODECS: Final = cast(tuple[str, ...], get_args(EchoCodec))

# How often a stalled connection looks whether its peer has gone (cheap: one poll()).
_STALL_POLL_S: Final = 1.0
# Marks remembered per connection, so that the echo of our echo is not echoed again.
_MAX_MARKS: Final = 1024


@attrs.frozen(slots=True)
class EchoOptions:
    """What ``serve_echo`` serves. ``port=0`` binds a free port (read it from the server)."""

    host: str = "127.0.0.1"
    port: int = 9000
    encapsulation: str = DEFAULT_ENCAPSULATION
    """A registry name (``-`` may stand for ``_``: ``asterisk-ws``)."""
    codec: EchoCodec | None = None
    """``rtp``: the codec the RTP packets must carry (default: whatever ``start``
    announces). ``telnyx``/``plivo``: answer in this codec at 8 kHz instead of the one
    received (to exercise bridge's transcoding). Ignored by the others."""
    drop_after: int | None = None
    stall_after: int | None = None
    reject: int | None = None
    max_handshakes: int = 1024

    def __attrs_post_init__(self) -> None:
        spec = dialect(self.encapsulation)  # UnknownDialect is a ValueError
        if spec.name not in encapsulations():
            raise ValueError(f"{self.encapsulation!r} is not an app-leg encapsulation")
        if self.codec is not None and self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r} ({', '.join(CODECS)})")
        if self.codec is not None and self.codec not in spec.codecs():
            carried = ", ".join(spec.codecs())
            raise ValueError(f"{spec.name} carries {carried}, not {self.codec}")
        for name in ("drop_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if self.reject is not None and not 300 <= self.reject <= 599:
            raise ValueError(f"reject needs an HTTP status 300-599, not {self.reject}")


@attrs.define(slots=True)
class EchoStats:
    """Counters over the server's lifetime (plain ints: read them any time)."""

    connections: int = 0
    active: int = 0
    rejected: int = 0
    frames: int = 0
    """Audio frames received (and echoed, unless the connection broke first)."""
    marks: int = 0
    dropped: int = 0
    """Connections aborted by ``drop_after``."""
    stalled: int = 0
    """Connections that reached ``stall_after``."""
    protocol_errors: int = 0


def app_dialect(encapsulation: str, codec: EchoCodec | None = None) -> Dialect:
    """A fresh app-role dialect for one connection (the registry's ``make_app``)."""
    role: Dialect = dialect(encapsulation).app_role(AppParams(codec=codec or ""))
    return role


def _peer_gone(fd: int) -> bool:
    """True once the peer has closed or reset the TCP connection, without reading the
    data queued in front of its FIN (POLLRDHUP, Linux; elsewhere only POLLHUP/POLLERR)."""
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


async def _abort(ws: WebSocketConnection, reason: str) -> None:
    # The transport has no public abort yet: close the socket without a closing
    # handshake, which is exactly what --drop-after is for (the peer sees 1006).
    await ws._abort(1006, reason)


@attrs.define(slots=True, eq=False)
class EchoServer:
    """The server's state; ``serve_echo`` hands it out once it listens."""

    options: EchoOptions
    stats: EchoStats = attrs.field(factory=EchoStats)
    addresses: list[tuple[str, int]] = attrs.field(factory=list)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        return f"ws://{format_peer(self.addresses[0])}"

    async def handle(self, request: WebSocketRequest) -> None:
        opts = self.options
        if opts.reject is not None:
            self.stats.rejected += 1
            await request.reject(
                opts.reject, f"rejected by bridge echo-server (--reject {opts.reject})\n"
            )
            return
        # Echo the dialect's subprotocol when offered (bridge dials asterisk-ws apps
        # with "media", as Asterisk does).
        wanted = dialect(opts.encapsulation).subprotocol
        ws = await request.accept(wanted if wanted in request.subprotocols else None)
        stats = self.stats
        stats.connections += 1
        stats.active += 1
        logger.debug("connection from %s:%d %s", *request.remote, request.path)
        try:
            await self._echo(ws)
        finally:
            stats.active -= 1

    async def _echo(self, ws: WebSocketConnection) -> None:
        """Read, decode, echo: all inline in this one task."""
        opts = self.options
        stats = self.stats
        dialect = app_dialect(opts.encapsulation, opts.codec)
        # The frame count at which a fault is injected (0: never).
        limit = min((n for n in (opts.drop_after, opts.stall_after) if n), default=0)
        frames = 0
        # A mark is echoed once. The peer may echo our echo back (bridge does exactly
        # that for marks from the app): a name we sent is not sent again, or the two
        # would ping-pong forever.
        ours: set[str | int | float] = set()
        receive = ws.receive
        send_nowait = ws.send_nowait
        async with trio.open_nursery() as nursery:
            writer = False
            try:
                while True:
                    message = await receive()
                    try:
                        events = dialect.receive(message)
                    except UnsupportedMessage as exc:
                        logger.debug("ignored: %s", exc)  # e.g. an unknown event: not fatal
                        continue
                    for event in events:
                        kind = type(event)
                        if kind is Audio:
                            assert isinstance(event, Audio)
                            pcm = event.frame.pcm
                            frames += 1
                            stats.frames += 1
                            if pcm:
                                send_nowait(dialect.send_audio(pcm))
                            if frames == limit:
                                await self._fault(ws, frames)
                                return
                        elif kind is Mark:
                            assert isinstance(event, Mark)
                            stats.marks += 1
                            if event.name in ours:
                                ours.discard(event.name)
                            else:
                                if len(ours) >= _MAX_MARKS:
                                    ours.clear()
                                ours.add(event.name)
                                for out in dialect.send(event):
                                    send_nowait(out)
                        elif kind is Stop:
                            await ws.close(1000)
                            return
                    if not writer and ws.backlog_bytes:
                        # The kernel refused a write: from now on a writer flushes.
                        writer = True
                        nursery.start_soon(self._serve_writer, ws)
            except ConnectionClosed:
                pass
            except DialectError as exc:
                stats.protocol_errors += 1
                logger.info("protocol error from %s:%d: %s", *ws.remote, exc)
                await ws.close(1002, "protocol error")
            except TransportError as exc:
                logger.debug("connection from %s:%d ended: %r", *ws.remote, exc)
            finally:
                nursery.cancel_scope.cancel()

    @staticmethod
    async def _serve_writer(ws: WebSocketConnection) -> None:
        try:
            await ws.serve_writer()
        except TransportError:
            pass  # the reader sees the connection closed too

    async def _fault(self, ws: WebSocketConnection, frames: int) -> None:
        opts = self.options
        if opts.drop_after is not None and frames >= opts.drop_after:
            self.stats.dropped += 1
            logger.info("dropping %s:%d after %d frames (--drop-after)", *ws.remote, frames)
            await _abort(ws, "echo-server --drop-after")
            return
        self.stats.stalled += 1
        logger.info("stalling %s:%d after %d frames (--stall-after)", *ws.remote, frames)
        # Stop reading (TCP backpressure builds up on the peer) until the peer gives up.
        # Polled: nothing signals "peer closed" without reading what is queued before it.
        fd = getattr(ws, "_fd", -1)
        while True:
            await trio.sleep(_STALL_POLL_S)
            if _peer_gone(fd):
                break
        await _abort(ws, "echo-server --stall-after: peer gone")


async def serve_echo(
    options: EchoOptions | None = None,
    *,
    task_status: trio.TaskStatus[EchoServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the echo application forever; ``task_status.started`` gives the
    :class:`EchoServer` (bound addresses, live counters)."""
    server = EchoServer(options or EchoOptions())
    opts = server.options
    async with trio.open_nursery() as nursery:
        server.addresses = await nursery.start(
            functools.partial(
                serve_websocket,
                server.handle,
                opts.host,
                opts.port,
                max_handshakes=opts.max_handshakes,
            )
        )
        task_status.started(server)
    raise AssertionError("unreachable: serve_websocket never returns")  # pragma: no cover


# ---------------------------------------------------------------------------------- CLI


def _encapsulation(text: str) -> str:
    try:
        name = dialect(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name not in encapsulations():
        raise argparse.ArgumentTypeError(f"{text!r} is not an app-leg encapsulation")
    return name


def _status(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an HTTP status") from None
    if not 300 <= value <= 599:
        raise argparse.ArgumentTypeError(f"{value} is not a 3xx-5xx HTTP status")
    return value


def add_echo_server_parser(
    subparsers: Any, *, configure_logging: Callable[[str], None]
) -> argparse.ArgumentParser:
    """Add ``bridge echo-server`` to the CLI's subparsers; ``configure_logging(level)``
    sends the ``bridge`` logger to the console (the CLI's set-up: the tools do not
    import the daemon)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "echo-server",
        help="a standalone WebSocket echo application (demos, tests, benchmarks)",
        description=(
            "A WebSocket application server that plays the app role of one encapsulation "
            "and sends every audio frame straight back. Prints 'ready ws://HOST:PORT ...' "
            "once it listens."
        ),
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:9000",
        metavar="HOST:PORT",
        help="address to listen on; port 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--encapsulation",
        type=_encapsulation,
        default=DEFAULT_ENCAPSULATION,
        metavar="|".join(cli_name(n) for n in encapsulations()),
        help="the protocol apps speak on this server (default: %(default)s)",
    )
    p.add_argument(
        "--codec",
        choices=CODECS,
        default=None,
        help=(
            "rtp: the codec of the RTP packets (default: what start announces); "
            "telnyx/plivo: answer in this codec at 8 kHz (default: as received)"
        ),
    )
    p.add_argument(
        "--drop-after",
        type=at_least_1,
        metavar="N",
        help="abort each connection (no closing handshake) after N audio frames",
    )
    p.add_argument(
        "--stall-after",
        type=at_least_1,
        metavar="N",
        help="stop reading and echoing after N audio frames, keeping the socket open",
    )
    p.add_argument(
        "--reject",
        type=_status,
        metavar="STATUS",
        help="answer every WebSocket upgrade with this HTTP status",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="(default: %(default)s)",
    )
    p.set_defaults(handler=functools.partial(_main, configure_logging=configure_logging))
    return p


def _main(args: argparse.Namespace, *, configure_logging: Callable[[str], None]) -> int:
    try:
        # ":9000" listens on loopback, as the default does.
        host, port = parse_host_port(args.listen, listen=True, default_host="127.0.0.1")
        options = EchoOptions(
            host=host,
            port=port,
            encapsulation=args.encapsulation,
            codec=args.codec,
            drop_after=args.drop_after,
            stall_after=args.stall_after,
            reject=args.reject,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    if args.log_level != "debug":
        # websockets logs every connection open/close at INFO: one line per call is
        # noise at benchmark scale.
        logging.getLogger("bridge.transports.websockets").setLevel(logging.WARNING)

    failed: list[str] = []
    servers: list[EchoServer] = []

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            try:
                server: EchoServer = await nursery.start(serve_echo, options)
            except OSError as exc:
                failed.append(f"cannot listen on {args.listen}: {exc.strerror or exc}")
                nursery.cancel_scope.cancel()
                return
            servers.append(server)
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            faults = [
                f"{name}={value}"
                for name, value in (
                    ("drop_after", options.drop_after),
                    ("stall_after", options.stall_after),
                    ("reject", options.reject),
                )
                if value is not None
            ]
            # The ready line: scripts wait for it and read the port from it.
            print(
                f"ready {server.url} encapsulation={options.encapsulation}"
                + "".join(f" {f}" for f in faults),
                flush=True,
            )

    trio.run(run)
    if failed:
        print(f"error: {failed[0]}", file=sys.stderr)
        return 1
    if servers:
        st = servers[0].stats
        logger.info(
            "stopped: %d connections, %d frames echoed, %d marks, %d rejected, %d dropped,"
            " %d stalled, %d protocol errors",
            st.connections,
            st.frames,
            st.marks,
            st.rejected,
            st.dropped,
            st.stalled,
            st.protocol_errors,
        )
    return 0


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    """SIGINT/SIGTERM end the server quietly (benchmarks stop it with SIGTERM)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
