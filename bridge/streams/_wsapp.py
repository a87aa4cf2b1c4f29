"""The WebSocket app leg: bridge dials the application and plays the *platform* role of
the route's encapsulation (sln, twilio, telnyx, plivo, rtp, audiosocket).

PROTOCOLS.md §0: the upgrade request carries ``X-Bridge-Stream-Id``, ``X-Bridge-Call-Id``
and ``X-Bridge-Route`` plus the route's extra headers; the first message is the
encapsulation's start. Carrier encapsulations greet with their ``connected`` message
first, as the carriers do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

import attrs
import trio

from ..dialects import Connected, Message
from ..transports import open_websocket_client
from ._pipelegs import Dialect, PipeAppConnection

__all__ = ["WsAppConnector", "platform_dialect"]


def platform_dialect(
    encapsulation: str,
    *,
    stream_id: str,
    call_id: str,
    sample_rate: int,
    codec: str = "pcmu",
    ptime_ms: int = 20,
    metadata: Mapping[str, Any] | None = None,
) -> Dialect:
    """A fresh platform-role dialect for one app connection (one per attempt, so the
    carrier counters restart with the start message, under the same stream id)."""
    if encapsulation == "sln":
        from ..dialects._sln import SlnPlatform

        return SlnPlatform(stream_id, call_id, sample_rate, ptime_ms)
    if encapsulation == "audiosocket":
        from ..dialects._encapsulated import AudioSocketWsPlatform

        return AudioSocketWsPlatform(stream_id, call_id, sample_rate, ptime_ms)
    if encapsulation == "rtp":
        from ..dialects._encapsulated import RtpWsPlatform

        rtp_codec = cast(Literal["pcmu", "pcma", "l16"], codec)
        return RtpWsPlatform(stream_id, call_id, rtp_codec, sample_rate, ptime_ms)
    if encapsulation == "twilio":
        from ..dialects._twilio import TwilioPlatform

        return TwilioPlatform(stream_id, call_id, "bridge", dict(metadata or {}).get("customParameters", {}))
    if encapsulation == "telnyx":
        from ..dialects._telnyx import TelnyxPlatform

        return TelnyxPlatform(stream_id, call_id, codec=codec.upper(), sample_rate=sample_rate)
    if encapsulation == "plivo":
        from ..dialects._plivo import PlivoPlatform

        content_type = (
            "audio/x-mulaw;rate=8000" if codec == "pcmu" else f"audio/x-l16;rate={sample_rate}"
        )
        return PlivoPlatform(stream_id, call_id, "bridge", content_type=content_type)
    raise ValueError(f"unknown encapsulation {encapsulation!r}")


#: Encapsulations whose platform greets with a ``connected`` message before ``start``.
_GREETS = frozenset({"twilio", "telnyx"})


@attrs.define(slots=True, eq=False)
class WsAppConnector:
    """Dials ``url`` once per attempt; see ``AppConnector``."""

    app_url: str
    encapsulation: str = "sln"
    sample_rate: int = 8000
    codec: str = "pcmu"
    route: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)
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
        async with open_websocket_client(
            self.app_url,
            headers=headers,
            handshake_timeout_s=self.connect_timeout_s,
            send_timeout_s=self.send_timeout_s,
            ping_interval_s=self.ping_interval_s,
            ping_timeout_s=self.ping_timeout_s,
            close_timeout_s=self.close_timeout_s,
            max_message_bytes=self.max_message_bytes,
            ca_file=self.ca_file or None,
        ) as ws:
            dialect = platform_dialect(
                self.encapsulation,
                stream_id=stream_id,
                call_id=call_id,
                sample_rate=self.sample_rate,
                codec=self.codec,
                ptime_ms=self.ptime_ms,
            )
            conn = PipeAppConnection(dialect, ws, self.sample_rate)
            if self.encapsulation in _GREETS:
                greeting: list[Message] = dialect.send(Connected())
                for message in greeting:
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
