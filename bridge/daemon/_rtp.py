"""The RTP listener: a port pool and ``POST /v1/streams`` (ARCHITECTURE.md, "Admin HTTP API").

RTP has no signalling of its own. Whatever owns the call (an SBC, Asterisk ARI's
ExternalMedia, FreeSWITCH, a SIP stack) asks bridge for a port with ``POST /v1/streams``,
gets ``local`` back and points its media there; bridge answers to ``remote`` if given,
else to wherever the media comes from (symmetric RTP, RFC 4961). ``DELETE
/v1/streams/{id}`` ends the stream (``api_request``); so does ``[rtp] timeout`` without
media (``call_hangup``). Either way the stream's end closes the leg, which gives the
port back to the pool.

Importing this module registers :func:`start_rtp` in the daemon's listener hooks.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._errors import StreamRefused, TransportError
from ..dialects import FormatError, RtpSession, call_leg_for
from ..streams._rtpleg import RtpCallLeg, format_address
from ..transports import UdpPortPool
from ._config import RouteConfig, RtpConfig
from ._daemon import _LISTENER_HOOKS

if TYPE_CHECKING:
    from ._daemon import Daemon

__all__ = ["LISTENER", "RtpOpener", "parse_remote", "start_rtp"]

logger = logging.getLogger("bridge.daemon.rtp")

LISTENER: Final = "rtp"
#: The dialect of this listener, from the registry: its codecs and rates.
SPEC = call_leg_for(LISTENER)


def parse_remote(value: str) -> tuple[str, int]:
    """``ip:port`` or ``[ipv6]:port`` -> ``(ip, port)``; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"remote must be a string 'ip:port', not {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"remote {value!r}: expected ip:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    else:
        ipaddress.IPv4Address(host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"remote {value!r}: port must be 1..65535")
    return host, int(port_text)


@attrs.define(slots=True, eq=False)
class RtpOpener:
    """``daemon.rtp_opener``: opens RTP streams on ports of ``pool``."""

    daemon: Daemon
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
        daemon = self.daemon
        call_id, route, codec, rate, ptime, remote = self._validate(request)
        peer = request.get("remote") or "admin-api"
        try:
            if daemon.stopping:
                raise StreamRefused("draining", "bridge is draining; new calls are refused")
            # Admission before a port: a refused call must not cost a bind.
            daemon.manager.check_admission()
            try:
                sock, port = await self.pool.allocate()
            except TransportError as exc:
                raise StreamRefused("rtp_ports_exhausted", str(exc)) from None
            except OSError as exc:
                raise StreamRefused("rtp_bind_failed", f"cannot bind an RTP port: {exc}") from None
        except StreamRefused as exc:
            daemon.refused(LISTENER, exc.reason, peer, call_id=call_id)
            raise
        stream_id = str(uuid.uuid4())
        try:
            settings, _ = daemon.stream_settings(route)
            cfg = self.config
            metric = daemon.metrics.bad_input.labels(leg=LISTENER, kind="malformed_rtp")
            leg = RtpCallLeg(
                sock=sock,
                session=RtpSession(codec, rate, ptime_ms=ptime),
                call_id=call_id,
                remote=remote,
                latch_packets=cfg.latch_packets,
                timeout_s=cfg.timeout_s,
                jitter_start_ms=round(cfg.jitter_start_s * 1000),
                jitter_max_ms=round(cfg.jitter_max_s * 1000),
                tick_ms=settings.ptime_ms,
                on_release=lambda: self._release(port),
                on_bad_input=metric.inc,
                stream_id=stream_id,
            )
        except BaseException:
            self.pool.release(port)
            raise
        self.legs[port] = leg
        try:
            daemon.start_stream(leg, route, LISTENER, stream_id=stream_id)
        except StreamRefused as exc:
            leg.close_now()
            daemon.refused(LISTENER, exc.reason, peer, call_id=call_id)
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
        route = next((r for r in self.daemon.config.routes if r.name == name), None)
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
            daemon = self.daemon
            if rtp_opener_of(daemon) is self:
                daemon.rtp_opener = None
            for leg in list(self.legs.values()):
                leg.close_now()
            self.legs.clear()
            self.pool.close()


async def start_rtp(daemon: Daemon, nursery: trio.Nursery) -> None:
    """Listener hook: create the port pool from ``[rtp]`` and answer ``POST /v1/streams``."""
    cfg = daemon.config.rtp
    first, last = cfg.ports_range
    # RTP on even ports only, the odd one above each left for the peer's RTCP (RFC 3550
    # §11): a peer that sends RTCP to port + 1 must not land on another call's RTP port.
    first += first & 1
    if first > last:
        logger.error("[rtp] ports %s holds no even port: RTP streams are disabled", cfg.ports)
        return
    opener = RtpOpener(daemon, cfg, UdpPortPool(cfg.bind, first, last, step=2))
    daemon.rtp_opener = opener
    nursery.start_soon(opener.serve, name="rtp port pool")
    logger.info(
        "RTP ports %s %d-%d (even ports: %d streams)", cfg.bind, first, last, opener.pool.size
    )


def rtp_opener_of(daemon: Daemon) -> RtpOpener | None:
    """The daemon's RtpOpener (tests and metrics read ``pool.in_use`` through it)."""
    opener = daemon.rtp_opener
    return opener if isinstance(opener, RtpOpener) else None


if start_rtp not in _LISTENER_HOOKS:
    _LISTENER_HOOKS.append(start_rtp)
