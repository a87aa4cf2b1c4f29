"""The WebSocket app leg: bridge dials the application and plays the *platform* role of
the route's encapsulation (any dialect the registry lists with an ``app_leg``).

PROTOCOLS.md §0: the upgrade request carries ``X-Bridge-Stream-Id``, ``X-Bridge-Call-Id``
and ``X-Bridge-Route`` plus the route's extra headers (and the dialect's WebSocket
subprotocol, if it has one); the first message is the encapsulation's start. Carrier
encapsulations greet with their ``connected`` message first, as the carriers do (a
dialect's ``send(Connected())`` is that greeting, or nothing).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ..dialects import DEFAULT_ENCAPSULATION, Connected, Dialect, PlatformParams, dialect
from ..transports import open_websocket_client
from ._pipelegs import PipeAppConnection

__all__ = ["WsAppConnector", "platform_dialect"]


def platform_dialect(
    encapsulation: str,
    *,
    stream_id: str,
    call_id: str,
    sample_rate: int,
    codec: str = "",
    ptime_ms: int = 20,
    options: Mapping[str, Any] | None = None,
    route: str = "",
) -> Dialect:
    """A fresh platform-role dialect for one app connection (one per attempt, so the
    carrier counters restart with the start message, under the same stream id).

    Wall-clock timestamps (Plivo's ``media.timestamp``) start from now: sans-IO code has
    no clock, so the time is taken here."""
    spec = dialect(encapsulation)
    role: Dialect = spec.platform_role(
        PlatformParams(
            stream_id,
            call_id,
            sample_rate=sample_rate,
            codec=codec,
            ptime_ms=ptime_ms,
            options=options or {},
            wall_clock_ms=int(time.time() * 1000),
            route=route,
        )
    )
    return role


@attrs.define(slots=True, eq=False)
class WsAppConnector:
    """Dials ``url`` once per attempt; see ``AppConnector``."""

    app_url: str
    encapsulation: str = DEFAULT_ENCAPSULATION
    sample_rate: int = 8000
    codec: str = ""
    route: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: The route's ``app.options`` (the encapsulation's own keys).
    options: Mapping[str, Any] = attrs.field(factory=dict)
    ca_file: str = ""
    ptime_ms: int = 20
    connect_timeout_s: float = 5.0
    send_timeout_s: float = 2.0
    ping_interval_s: float | None = 10.0
    ping_timeout_s: float | None = 10.0
    close_timeout_s: float = 2.0
    max_message_bytes: int = 1 << 20

    @property
    def url(self) -> str:
        return self.app_url

    @asynccontextmanager
    async def open(self, stream_id: str, call_id: str) -> AsyncIterator[PipeAppConnection]:
        headers = [
            ("X-Bridge-Stream-Id", stream_id),
            ("X-Bridge-Call-Id", call_id),
            ("X-Bridge-Route", self.route),
            *self.headers.items(),
        ]
        subprotocol = dialect(self.encapsulation).subprotocol
        async with open_websocket_client(
            self.app_url,
            headers=headers,
            subprotocols=() if subprotocol is None else (subprotocol,),
            handshake_timeout_s=self.connect_timeout_s,
            send_timeout_s=self.send_timeout_s,
            ping_interval_s=self.ping_interval_s,
            ping_timeout_s=self.ping_timeout_s,
            close_timeout_s=self.close_timeout_s,
            max_message_bytes=self.max_message_bytes,
            ca_file=self.ca_file or None,
        ) as ws:
            role = platform_dialect(
                self.encapsulation,
                stream_id=stream_id,
                call_id=call_id,
                sample_rate=self.sample_rate,
                codec=self.codec,
                ptime_ms=self.ptime_ms,
                options=self.options,
                route=self.route,
            )
            conn = PipeAppConnection(role, ws, self.sample_rate)
            for message in role.send(Connected()):  # the carriers' greeting, if any
                ws.send_nowait(message)
            try:
                yield conn
            finally:
                # The stream may be ending (cancelled): the stop message queued by the
                # supervisor and the close handshake still go out, bounded.
                if not ws.closed:
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + self.close_timeout_s
                        await ws.close(1011 if conn.failed else 1000)
