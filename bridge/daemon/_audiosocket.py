"""The AudioSocket listener: the target of Asterisk's ``AudioSocket(uuid,host:port)``
and ``Dial(AudioSocket/host:port/uuid)`` (PROTOCOLS.md §2).

Asterisk is the TCP client. Every connection must send its UUID frame first, within
``first_frame_timeout`` (no slowloris); at most ``max_pending`` connections may be in
that state at once. A refused call gets the AudioSocket hangup frame ``00 00 00``, the
one thing besides audio that Asterisk accepts from a server, and a log line and a
metric label saying why.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .._errors import ConnectionClosed, DialectError, StreamRefused
from ..dialects import Event, Start
from ..dialects._audiosocket import HANGUP_FRAME, AudioSocketApp
from ..streams import PipeCallLeg
from ..transports import open_tcp_listener, set_nodelay
from ..transports._pipes import TcpPipe
from ._config import AudioSocketConfig

if TYPE_CHECKING:
    from ._daemon import Daemon

__all__ = ["serve_audiosocket"]

logger = logging.getLogger("bridge.daemon.audiosocket")

LISTENER = "audiosocket"


async def serve_audiosocket(
    daemon: Daemon,
    config: AudioSocketConfig,
    *,
    listener: trio.SocketListener | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept AudioSocket calls on ``listener`` (bound from ``config`` when None; closed
    on the way out either way)."""
    if listener is None:
        addr = config.listen_addr
        assert addr is not None
        listener = await open_tcp_listener(addr[0], addr[1], reuse_port=config.reuse_port)
    bound = listener.socket.getsockname()
    pending = 0
    async with listener, trio.open_nursery() as nursery:
        task_status.started((bound[0], bound[1]))
        logger.info("AudioSocket listening on %s:%d", bound[0], bound[1])
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, don't spin
                logger.warning("AudioSocket accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if pending >= config.max_pending:
                daemon.refused(LISTENER, "too_many_pending", _peer(stream))
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                continue
            pending += 1

            async def handle(stream: trio.SocketStream = stream) -> None:
                nonlocal pending
                try:
                    await _handle(daemon, config, stream)
                finally:
                    pending -= 1

            nursery.start_soon(handle)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


async def _handle(daemon: Daemon, config: AudioSocketConfig, stream: trio.SocketStream) -> None:
    # Asterisk writes header and payload in one send and so do we; Nagle would hold our
    # 20 ms frames back (PROTOCOLS.md §2 "Robustness").
    set_nodelay(stream)
    peer = _peer(stream)
    pipe = TcpPipe(stream)
    dialect = AudioSocketApp(max_payload_bytes=config.max_frame_bytes)
    events: list[Event] = []
    start: Start | None = None
    handed_over = False
    try:
        with trio.move_on_after(config.first_frame_timeout_s) as scope:
            while start is None:
                events.extend(dialect.receive(await pipe.receive()))
                for i, event in enumerate(events):
                    if type(event) is Start:
                        start = event
                        events = events[i + 1 :]
                        break
        if scope.cancelled_caught:
            daemon.bad_input(
                LISTENER,
                "first_frame_timeout",
                f"no UUID frame within {config.first_frame_timeout_s:g}s from {peer}",
            )
            return
        assert start is not None
        route = daemon.match_route(LISTENER)
        if route is None:
            daemon.refused(LISTENER, "no_route", peer, call_id=start.call_id)
            pipe.send_nowait(HANGUP_FRAME)
            return
        leg = PipeCallLeg(
            kind=LISTENER,
            dialect=dialect,
            pipe=pipe,
            start=start,
            pending=tuple(events),
            far_side_buffers=False,
        )
        try:
            daemon.start_stream(leg, route, LISTENER)
        except StreamRefused as exc:
            daemon.refused(LISTENER, exc.reason, peer, call_id=start.call_id)
            pipe.send_nowait(HANGUP_FRAME)
            return
        handed_over = True
    except DialectError as exc:
        daemon.bad_input(LISTENER, "protocol_error", f"{peer}: {exc}")
    except ConnectionClosed:
        if start is None:
            daemon.bad_input(LISTENER, "closed_before_uuid", f"{peer} closed before its UUID")
    finally:
        if not handed_over:
            await pipe.aclose()
