"""The AudioSocket listener: the target of Asterisk's ``AudioSocket(uuid,host:port)``
and ``Dial(AudioSocket/host:port/uuid)`` (PROTOCOLS.md §2).

Asterisk is the TCP client. A connection is *pending* until its UUID frame arrives,
which must happen within ``first_frame_timeout`` of the accept (no slowloris). At most
``max_pending_per_peer`` connections from one address and ``max_pending`` in all may be
pending; a connection over either is reset at accept (``transports.serve_admitted``),
counted in ``bridge_admission_refused_total`` and never evicts anyone. Every bad
connection -- garbage, a timeout, a close before the UUID -- is one count in
``bridge_bad_input_total`` and one line within the daemon's bad-peer budget. A refused
call gets the AudioSocket hangup frame ``00 00 00``, the one thing besides audio that
Asterisk accepts from a server, and a log line and a metric label saying why.
"""

from __future__ import annotations

import functools
import logging

import trio

from .._errors import ConnectionClosed, DialectError, StreamRefused
from ..dialects import HANGUP_FRAME, AudioSocketApp, Event, Start
from ..streams import PipeCallLeg
from ..transports import (
    Admission,
    Pending,
    format_peer,
    open_tcp_listener,
    serve_admitted,
    set_nodelay,
)
from ..transports._pipes import TcpPipe
from ._admission import CallAdmission
from ._config import AudioSocketConfig

__all__ = ["serve_audiosocket"]

logger = logging.getLogger("bridge.daemon.audiosocket")

LISTENER = "audiosocket"


async def serve_audiosocket(
    admission: CallAdmission,
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
    limits = Admission(config.max_pending, min(config.max_pending_per_peer, config.max_pending))

    def refused(peer: tuple[str, int], reason: str) -> None:
        admission.admission_refused(LISTENER, reason, format_peer(peer))

    async def handle(stream: trio.SocketStream, peer: tuple[str, int], pending: Pending) -> None:
        await _handle(admission, config, stream, format_peer(peer), pending)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(serve_admitted, handle, [listener], limits, on_refused=refused)
        )
        logger.info(
            "AudioSocket listening on %s:%d (pending at most %d, %d per peer)",
            bound[0],
            bound[1],
            limits.max_pending,
            limits.max_pending_per_peer,
        )
        task_status.started((bound[0], bound[1]))


async def _handle(
    admission: CallAdmission,
    config: AudioSocketConfig,
    stream: trio.SocketStream,
    peer: str,
    pending: Pending,
) -> None:
    # Asterisk writes header and payload in one send and so do we; Nagle would hold our
    # 20 ms frames back (PROTOCOLS.md §2 "Robustness").
    set_nodelay(stream)
    pipe = TcpPipe(stream)
    dialect = AudioSocketApp(max_payload_bytes=config.max_frame_bytes)
    events: list[Event] = []
    start: Start | None = None
    received = 0
    handed_over = False
    try:
        with trio.move_on_after(config.first_frame_timeout_s) as scope:
            while start is None:
                chunk = await pipe.receive()
                received += len(chunk)
                events.extend(dialect.receive(chunk))
                for i, event in enumerate(events):
                    if type(event) is Start:
                        start = event
                        events = events[i + 1 :]
                        break
        if scope.cancelled_caught:
            admission.bad_input(
                LISTENER,
                "first_frame_timeout",
                f"no UUID frame within {config.first_frame_timeout_s:g}s "
                f"({received} bytes received)",
                peer=peer,
            )
            return
        assert start is not None
        # The UUID arrived: no longer pending, whatever happens to the call now.
        pending.release()
        route = admission.match_route(LISTENER)
        if route is None:
            admission.refused(LISTENER, "no_route", peer, call_id=start.call_id)
            pipe.send_nowait(HANGUP_FRAME)
            return
        leg = PipeCallLeg(
            kind=LISTENER,
            dialect=dialect,
            pipe=pipe,
            start=start,
            pending=tuple(events),
            far_side_buffers=False,
            peer=peer,
        )
        try:
            admission.start_stream(leg, route, LISTENER)
        except StreamRefused as exc:
            admission.refused(LISTENER, exc.reason, peer, call_id=start.call_id)
            pipe.send_nowait(HANGUP_FRAME)
            return
        handed_over = True
    except DialectError as exc:
        admission.bad_input(LISTENER, "protocol_error", str(exc), peer=peer)
    except ConnectionClosed:
        if start is None:
            if received:
                admission.bad_input(
                    LISTENER,
                    "closed_before_uuid",
                    f"closed after {received} bytes, before its UUID frame",
                    peer=peer,
                )
            else:
                # Connect and close with nothing sent: a TCP health check or a port
                # scan, not bad input.
                logger.debug("connection from %s closed without sending anything", peer)
    finally:
        if not handed_over:
            await pipe.aclose()
