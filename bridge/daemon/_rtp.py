"""The RTP listener: a port pool and ``POST /v1/streams`` (ARCHITECTURE.md, "Admin HTTP API").

RTP has no signalling of its own. Whatever owns the call (an SBC, Asterisk ARI's
ExternalMedia, FreeSWITCH, a SIP stack) asks bridge for a port with ``POST /v1/streams``,
gets ``local`` back and points its media there; bridge answers to ``remote`` if given,
else to wherever the media comes from (symmetric RTP, RFC 4961). ``DELETE
/v1/streams/{id}`` ends the stream (``api_request``); so does ``[rtp] timeout`` without
media (``call_hangup``). Either way the stream's end closes the leg, which gives the
port back to the pool.

The daemon makes the :class:`RtpOpener` (:func:`open_rtp_opener`), runs its ``serve`` (it
holds the pool) and hands ``POST /v1/streams`` to it. The opener admits calls through
the daemon's ``CallAdmission``, as the other listeners do.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Final

import attrs
import trio

from .._errors import StreamRefused, TransportError
from ..dialects import FormatError, RtpSession, call_leg_for
from ..streams._rtpleg import RtpCallLeg, format_address
from ..transports import UdpPortPool, parse_host_port
from ._admission import CallAdmission
from ._config import RouteConfig, RtpConfig

__all__ = ["LISTENER", "RtpOpener", "open_rtp_opener", "parse_remote", "rtp_opener_of"]

logger = logging.getLogger("bridge.daemon.rtp")

LISTENER: Final = "rtp"
#: The dialect of this listener, from the registry: its codecs and rates.
SPEC = call_leg_for(LISTENER)


def parse_remote(value: str) -> tuple[str, int]:
    """``ip:port`` or ``[ipv6]:port`` -> ``(ip, port)``; ValueError otherwise. An IP
    address only: a media peer's address is never resolved."""
    try:
        return parse_host_port(value, ip_only=True)
    except ValueError as exc:
        raise ValueError(f"remote {value!r}: {exc}") from None


@attrs.define(slots=True, eq=False)
class RtpOpener:
    """``daemon.rtp_opener``: opens RTP streams on ports of ``pool``."""

    admission: CallAdmission
    config: RtpConfig
    pool: UdpPortPool
    #: Live legs by port (shut down with the pool).
    legs: dict[int, RtpCallLeg] = attrs.field(factory=dict)
    opened: int = 0

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.open_stream(request)

    async def open_stream(self, request: dict[str, Any]) -> dict[str, Any]:
        """Open one stream. ValueError (-> 400) for a bad request, StreamRefused (-> 503)
        when bridge cannot take it now."""
        admission = self.admission
        call_id, route, codec, rate, ptime, remote = self._validate(request)
        peer = request.get("remote") or "admin-api"
        try:
            # Admission before a port: a refused call must not cost a bind.
            admission.check_admission()
            try:
                sock, port = await self.pool.allocate()
            except TransportError as exc:
                raise StreamRefused("rtp_ports_exhausted", str(exc)) from None
            except OSError as exc:
                raise StreamRefused("rtp_bind_failed", f"cannot bind an RTP port: {exc}") from None
        except StreamRefused as exc:
            admission.refused(LISTENER, exc.reason, peer, call_id=call_id)
            raise
        stream_id = str(uuid.uuid4())
        try:
            # The leg's frames are the stream's ptime (the route's [stream] ptime).
            tick_ms = round(admission.config.route_stream(route).ptime_s * 1000)
            cfg = self.config
            count_malformed = admission.bad_input_counter(LISTENER, "malformed_rtp")
            leg = RtpCallLeg(
                sock=sock,
                session=RtpSession(codec, rate, ptime_ms=ptime),
                call_id=call_id,
                remote=remote,
                latch_packets=cfg.latch_packets,
                timeout_s=cfg.timeout_s,
                jitter_start_ms=round(cfg.jitter_start_s * 1000),
                jitter_max_ms=round(cfg.jitter_max_s * 1000),
                tick_ms=tick_ms,
                on_release=lambda: self._release(port),
                on_bad_input=count_malformed,
                stream_id=stream_id,
            )
        except BaseException:
            self.pool.release(port)
            raise
        self.legs[port] = leg
        try:
            admission.start_stream(leg, route, LISTENER, stream_id=stream_id)
        except StreamRefused as exc:
            leg.close_now()
            admission.refused(LISTENER, exc.reason, peer, call_id=call_id)
            raise
        except BaseException:
            leg.close_now()
            raise
        self.opened += 1
        local = format_address(leg.local_address)
        logger.info(
            "RTP stream opened on %s",
            local,
            extra={
                "stream_id": stream_id,
                "call_id": call_id,
                "route": route.name,
                "remote": format_address(remote),
                "codec": codec,
            },
        )
        return {
            "stream_id": stream_id,
            "call_id": call_id,
            "local": local,
            "codec": codec,
            "sample_rate": rate,
            "ptime": ptime,
            "payload_type": leg.session.payload_type,
            "dtmf_payload_type": leg.session.dtmf_payload_type,
        }

    def _validate(
        self, request: dict[str, Any]
    ) -> tuple[str, RouteConfig, Any, int, int, tuple[str, int] | None]:
        call_id = request.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ValueError("call_id is required")
        name = request.get("route")
        if not isinstance(name, str) or not name:
            raise ValueError(
                f'route is required (the name of a route with listener = "{LISTENER}")'
            )
        route = self.admission.config.route_by_name(name)
        if route is None:
            raise ValueError(f"unknown route {name!r}")
        if route.match.listener != LISTENER:
            raise ValueError(
                f"route {name!r} takes {route.match.listener} calls, not {LISTENER}"
                f' (its match.listener must be "{LISTENER}")'
            )
        codec = request.get("codec", SPEC.default_codec())
        codecs = SPEC.codecs()
        if codec not in codecs:
            raise ValueError(f"codec {codec!r}: expected one of {', '.join(codecs)}")
        rate = request.get("sample_rate", 8000)
        if not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"sample_rate {rate!r}: expected a positive integer")
        try:
            # G.711 has an 8000 Hz RTP clock (RFC 3551); L16 the rates the spec lists.
            SPEC.resolve_format(codec, rate)
        except FormatError as exc:
            raise ValueError(f"{exc.message} (RFC 3551)") from None
        ptime = request.get("ptime", 20)
        if not isinstance(ptime, int) or not 10 <= ptime <= 60 or ptime % 10:
            raise ValueError(f"ptime {ptime!r}: expected 10, 20, 30, 40, 50 or 60 (ms)")
        remote = None
        if request.get("remote") is not None:
            remote = parse_remote(request["remote"])
            bind_v6 = ":" in self.config.bind
            if (":" in remote[0]) != bind_v6:
                raise ValueError(
                    f"remote {request['remote']!r} is not reachable from [rtp] bind"
                    f" {self.config.bind!r} (IPv4 vs IPv6)"
                )
        return call_id, route, codec, rate, ptime, remote

    def _release(self, port: int) -> None:
        self.legs.pop(port, None)
        self.pool.release(port)

    async def serve(self) -> None:
        """Hold the pool for the daemon's lifetime; on the way out close every socket.

        A leg still open then is detached first, so that no stream can send on a file
        descriptor number the kernel has already handed to something else.
        """
        try:
            await trio.sleep_forever()
        finally:
            for leg in list(self.legs.values()):
                leg.close_now()
            self.legs.clear()
            self.pool.close()


def open_rtp_opener(admission: CallAdmission, cfg: RtpConfig) -> RtpOpener | None:
    """The opener of ``[rtp]``'s port pool (run its ``serve``), or None when the range
    holds no usable port (logged: RTP streams are disabled)."""
    first, last = cfg.ports_range
    # RTP on even ports only, the odd one above each left for the peer's RTCP (RFC 3550
    # §11): a peer that sends RTCP to port + 1 must not land on another call's RTP port.
    first += first & 1
    if first > last:
        logger.error("[rtp] ports %s holds no even port: RTP streams are disabled", cfg.ports)
        return None
    opener = RtpOpener(admission, cfg, UdpPortPool(cfg.bind, first, last, step=2))
    logger.info(
        "RTP ports %s %d-%d (even ports: %d streams)", cfg.bind, first, last, opener.pool.size
    )
    return opener


def rtp_opener_of(daemon: object) -> RtpOpener | None:
    """The daemon's RtpOpener while it runs (tests read ``pool.in_use`` through it)."""
    opener = getattr(daemon, "rtp_opener", None)
    return opener if isinstance(opener, RtpOpener) else None
