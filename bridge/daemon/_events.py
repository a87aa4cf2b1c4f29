"""Lifecycle events, stream records and the status-callback signature.

A :class:`StreamEvent` is one status callback: what happened to a stream (``StartStream``,
``StopStream``, ``DroppedStream``, ``DegradedStream``, ``RecoveredStream``), with an
``event_id`` that stays the same on every retry so receivers can de-duplicate. Its
``body()`` is exactly the JSON the receiver gets (``docs/callback.schema.json``); the
delivery fields (``callback_url``, ``callback_secret``) travel with the event to the outbox
but never appear in the body.

A :class:`StreamRecord` is the call-detail record an ended stream leaves behind.

``sign``/``verify_signature`` are the two halves of the ``X-Bridge-Signature`` header::

    X-Bridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Everything here is pure (no I/O) so the per-call code can build events cheaply and the
tests can check bodies without a network.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import attrs
import msgspec

from ._credentials import as_bytes, matches_any

__all__ = [
    "EVENT_NAMES",
    "JITTER_COUNTERS",
    "REASONS",
    "EventName",
    "EventSource",
    "HangupReason",
    "StreamEvent",
    "StreamRecord",
    "iso_utc",
    "log_entry",
    "parse_iso_utc",
    "sign",
    "verify_signature",
]

EventName = Literal[
    "StartStream", "StopStream", "DroppedStream", "DegradedStream", "RecoveredStream"
]
HangupReason = Literal[
    "api_request",
    "call_hangup",
    "app_hangup",
    "connection_error",
    "slow_connection",
    "stream_timeout",
    "shutdown",
]

EVENT_NAMES: tuple[EventName, ...] = get_args(EventName)
REASONS: frozenset[str] = frozenset(get_args(HangupReason))
JITTER_COUNTERS: tuple[str, ...] = ("received", "late", "lost", "concealed", "reordered")

# Events whose body must carry a reason (the schema's ``allOf`` rule).
_NEEDS_REASON = frozenset({"StopStream", "DroppedStream"})

_json_encode = msgspec.json.Encoder().encode


# --------------------------------------------------------------------------- time


def iso_utc(dt: datetime) -> str:
    """``2026-11-21T06:16:21.123Z``: UTC, millisecond precision, ``Z`` suffix."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: pass an aware (UTC) datetime")
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso_utc(text: str) -> datetime:
    """Inverse of :func:`iso_utc` (accepts any ISO 8601 with an offset; returns UTC)."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {text!r}")
    return dt.astimezone(UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    # Naive datetimes are refused rather than guessed: a local-time timestamp in a
    # callback would be silently wrong by hours.
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"timestamps must be timezone-aware datetimes, got {value!r}")
    return value.astimezone(UTC)


def _new_event_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- events


def _check_reason(_inst: object, _attr: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and value not in REASONS:
        raise ValueError(f"unknown hangup reason {value!r}; expected one of {sorted(REASONS)}")


@attrs.frozen(slots=True, kw_only=True)
class StreamEvent:
    """One lifecycle event of one stream, and where its status callback goes.

    Build them with the factories (``StreamEvent.start(...)``, ``.stop``, ``.dropped``,
    ``.degraded``, ``.recovered``) or, per stream, with an :class:`EventSource`.
    """

    event: EventName = attrs.field(validator=attrs.validators.in_(EVENT_NAMES))
    stream_id: str
    call_id: str
    app_url: str
    route: str = ""
    event_id: str = attrs.field(factory=_new_event_id)
    timestamp: datetime = attrs.field(factory=_utc_now, converter=_to_utc)
    reason: HangupReason | None = attrs.field(default=None, validator=_check_reason)
    error: str | None = None
    buffer_percent: int | None = None
    attempts: int | None = None
    duration_s: float | None = None
    # Delivery only; never in the body. "" means: keep the event in the stream's log,
    # send nothing.
    callback_url: str = ""
    callback_secret: str = attrs.field(default="", repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.stream_id:
            raise ValueError("stream_id must not be empty")
        if not self.event_id:
            raise ValueError("event_id must not be empty")
        if self.event in _NEEDS_REASON and self.reason is None:
            raise ValueError(f"{self.event} needs a reason")
        if self.event == "DegradedStream" and self.buffer_percent is None:
            raise ValueError("DegradedStream needs buffer_percent")

    def to_dict(self) -> dict[str, Any]:
        """The callback body as a dict (unset optional fields left out)."""
        body: dict[str, Any] = {
            "event": self.event,
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "call_id": self.call_id,
            "timestamp": iso_utc(self.timestamp),
            "app_url": self.app_url,
        }
        if self.route:
            body["route"] = self.route
        if self.reason is not None:
            body["reason"] = self.reason
        if self.error is not None:
            body["error"] = self.error
        if self.buffer_percent is not None:
            body["buffer_percent"] = int(self.buffer_percent)
        if self.attempts is not None:
            body["attempts"] = int(self.attempts)
        if self.duration_s is not None:
            body["duration_s"] = round(float(self.duration_s), 3)
        return body

    def body(self) -> bytes:
        """The exact bytes POSTed to the callback URL (compact JSON)."""
        return _json_encode(self.to_dict())

    # -- factories ---------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        stream_id: str,
        call_id: str,
        app_url: str,
        route: str = "",
        callback_url: str = "",
        callback_secret: str = "",
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> StreamEvent:
        """``StartStream``: the app leg is open and the dialect's start message is sent."""
        return cls(
            event="StartStream",
            stream_id=stream_id,
            call_id=call_id,
            app_url=app_url,
            route=route,
            callback_url=callback_url,
            callback_secret=callback_secret,
            timestamp=timestamp or _utc_now(),
            event_id=event_id or _new_event_id(),
        )

    @classmethod
    def stop(
        cls,
        *,
        stream_id: str,
        call_id: str,
        app_url: str,
        reason: HangupReason,
        duration_s: float,
        route: str = "",
        callback_url: str = "",
        callback_secret: str = "",
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> StreamEvent:
        """``StopStream``: the stream ended in an orderly way for ``reason``."""
        return cls(
            event="StopStream",
            stream_id=stream_id,
            call_id=call_id,
            app_url=app_url,
            route=route,
            reason=reason,
            duration_s=duration_s,
            callback_url=callback_url,
            callback_secret=callback_secret,
            timestamp=timestamp or _utc_now(),
            event_id=event_id or _new_event_id(),
        )

    @classmethod
    def dropped(
        cls,
        *,
        stream_id: str,
        call_id: str,
        app_url: str,
        reason: HangupReason,
        error: str | None = None,
        attempts: int | None = None,
        duration_s: float | None = None,
        route: str = "",
        callback_url: str = "",
        callback_secret: str = "",
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> StreamEvent:
        """``DroppedStream``: the app leg was lost for good (``connection_error``, ``slow_connection``)."""
        return cls(
            event="DroppedStream",
            stream_id=stream_id,
            call_id=call_id,
            app_url=app_url,
            route=route,
            reason=reason,
            error=error,
            attempts=attempts,
            duration_s=duration_s,
            callback_url=callback_url,
            callback_secret=callback_secret,
            timestamp=timestamp or _utc_now(),
            event_id=event_id or _new_event_id(),
        )

    @classmethod
    def degraded(
        cls,
        *,
        stream_id: str,
        call_id: str,
        app_url: str,
        buffer_percent: int,
        error: str | None = None,
        route: str = "",
        callback_url: str = "",
        callback_secret: str = "",
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> StreamEvent:
        """``DegradedStream``: the uplink buffer crossed ``buffer_percent`` (30/60/90)."""
        return cls(
            event="DegradedStream",
            stream_id=stream_id,
            call_id=call_id,
            app_url=app_url,
            route=route,
            buffer_percent=buffer_percent,
            error=error,
            callback_url=callback_url,
            callback_secret=callback_secret,
            timestamp=timestamp or _utc_now(),
            event_id=event_id or _new_event_id(),
        )

    @classmethod
    def recovered(
        cls,
        *,
        stream_id: str,
        call_id: str,
        app_url: str,
        buffer_percent: int | None = None,
        attempts: int | None = None,
        route: str = "",
        callback_url: str = "",
        callback_secret: str = "",
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> StreamEvent:
        """``RecoveredStream``: the app leg is back and the buffer drained (``buffer_percent`` = fill now)."""
        return cls(
            event="RecoveredStream",
            stream_id=stream_id,
            call_id=call_id,
            app_url=app_url,
            route=route,
            buffer_percent=buffer_percent,
            attempts=attempts,
            callback_url=callback_url,
            callback_secret=callback_secret,
            timestamp=timestamp or _utc_now(),
            event_id=event_id or _new_event_id(),
        )


@attrs.frozen(slots=True, kw_only=True)
class EventSource:
    """A stream's identity and callback target, built once per stream.

    The stream code keeps one and calls ``source.stop(reason=..., duration_s=...)``
    instead of repeating six identity arguments on every event.
    """

    stream_id: str
    call_id: str
    app_url: str
    route: str = ""
    callback_url: str = ""
    callback_secret: str = attrs.field(default="", repr=False)

    def _ident(self) -> dict[str, str]:
        return {
            "stream_id": self.stream_id,
            "call_id": self.call_id,
            "app_url": self.app_url,
            "route": self.route,
            "callback_url": self.callback_url,
            "callback_secret": self.callback_secret,
        }

    def start(self, *, timestamp: datetime | None = None) -> StreamEvent:
        return StreamEvent.start(**self._ident(), timestamp=timestamp)

    def stop(
        self, *, reason: HangupReason, duration_s: float, timestamp: datetime | None = None
    ) -> StreamEvent:
        return StreamEvent.stop(
            **self._ident(), reason=reason, duration_s=duration_s, timestamp=timestamp
        )

    def dropped(
        self,
        *,
        reason: HangupReason,
        error: str | None = None,
        attempts: int | None = None,
        duration_s: float | None = None,
        timestamp: datetime | None = None,
    ) -> StreamEvent:
        return StreamEvent.dropped(
            **self._ident(),
            reason=reason,
            error=error,
            attempts=attempts,
            duration_s=duration_s,
            timestamp=timestamp,
        )

    def degraded(
        self, *, buffer_percent: int, error: str | None = None, timestamp: datetime | None = None
    ) -> StreamEvent:
        return StreamEvent.degraded(
            **self._ident(), buffer_percent=buffer_percent, error=error, timestamp=timestamp
        )

    def recovered(
        self,
        *,
        buffer_percent: int | None = None,
        attempts: int | None = None,
        timestamp: datetime | None = None,
    ) -> StreamEvent:
        return StreamEvent.recovered(
            **self._ident(), buffer_percent=buffer_percent, attempts=attempts, timestamp=timestamp
        )


# --------------------------------------------------------------------------- records


def log_entry(name: str, detail: Any = "", *, time: datetime | None = None) -> dict[str, Any]:
    """One line of a stream's event log (its "debug log"): ``{time, name, detail}``."""
    return {"time": iso_utc(time or _utc_now()), "name": name, "detail": detail}


def _convert_log(entries: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    out = []
    for entry in entries:
        item = dict(entry)
        when = item.get("time")
        if isinstance(when, datetime):
            item["time"] = iso_utc(when)
        out.append(item)
    return tuple(out)


def _convert_jitter(value: Mapping[str, int] | None) -> dict[str, int]:
    # Every record carries all five counters so consumers never special-case a missing key.
    counters = dict.fromkeys(JITTER_COUNTERS, 0)
    if value:
        counters.update({str(k): int(v) for k, v in value.items()})
    return counters


def _convert_counts(value: Mapping[str, int] | None) -> dict[str, int]:
    return {str(k): int(v) for k, v in (value or {}).items()}


def _default_duration(record: StreamRecord) -> float:
    return max(0.0, (record.ended_at - record.started_at).total_seconds())


@attrs.frozen(slots=True, kw_only=True)
class StreamRecord:
    """The call-detail record of one ended stream.

    ``frames_in``/``bytes_in`` count call -> app, ``frames_out``/``bytes_out`` app -> call.
    ``events`` is the stream's own event log (``log_entry`` dicts), not the callbacks.
    """

    stream_id: str
    call_id: str
    route: str
    app_url: str
    listener: str = ""
    encapsulation: str = ""
    started_at: datetime = attrs.field(converter=_to_utc)
    ended_at: datetime = attrs.field(converter=_to_utc)
    duration_s: float = attrs.field(
        default=attrs.Factory(_default_duration, takes_self=True), converter=float
    )
    reason: HangupReason = attrs.field(validator=_check_reason)
    error: str | None = None
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    reconnects: int = 0
    max_buffer_percent: float = 0.0
    max_buffer_ms: int = 0
    lateness_p50_ms: float = 0.0
    lateness_p99_ms: float = 0.0
    lateness_max_ms: float = 0.0
    jitter: Mapping[str, int] = attrs.field(factory=dict, converter=_convert_jitter)
    #: What the playout policy did to the app's audio: trims, trimmed_frames, trimmed_ms,
    #: holds, grace_sends, early_sends, skipped_slots, flow_pauses.
    playout: Mapping[str, int] = attrs.field(factory=dict, converter=_convert_counts)
    events: tuple[Mapping[str, Any], ...] = attrs.field(factory=tuple, converter=_convert_log)

    def __attrs_post_init__(self) -> None:
        if not self.stream_id:
            raise ValueError("stream_id must not be empty")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (timestamps as ISO 8601 UTC strings, millisecond precision)."""
        return {
            "stream_id": self.stream_id,
            "call_id": self.call_id,
            "route": self.route,
            "app_url": self.app_url,
            "listener": self.listener,
            "encapsulation": self.encapsulation,
            "started_at": iso_utc(self.started_at),
            "ended_at": iso_utc(self.ended_at),
            "duration_s": round(self.duration_s, 3),
            "reason": self.reason,
            "error": self.error,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "reconnects": self.reconnects,
            "max_buffer_percent": self.max_buffer_percent,
            "max_buffer_ms": self.max_buffer_ms,
            "lateness_p50_ms": self.lateness_p50_ms,
            "lateness_p99_ms": self.lateness_p99_ms,
            "lateness_max_ms": self.lateness_max_ms,
            "jitter": dict(self.jitter),
            "playout": dict(self.playout),
            "events": [dict(e) for e in self.events],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamRecord:
        """Inverse of :meth:`to_dict` (timestamps come back at millisecond precision)."""
        fields = {a.name for a in attrs.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["started_at"] = parse_iso_utc(data["started_at"])
        kwargs["ended_at"] = parse_iso_utc(data["ended_at"])
        return cls(**kwargs)


# --------------------------------------------------------------------------- signing


def _mac(body: bytes, secret: str, t: int) -> str:
    return hmac.new(as_bytes(secret), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, t: int) -> str:
    """The ``X-Bridge-Signature`` value: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.

    The timestamp is inside the MAC so a captured request cannot be replayed later than
    the receiver's tolerance; the sender signs again (new ``t``) on every retry.
    """
    return f"t={t},v1={_mac(body, secret, t)}"


def verify_signature(
    header: str,
    body: bytes,
    secret: str,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """Check an ``X-Bridge-Signature`` header the way receivers should.

    True when ``t`` is within ``tolerance_s`` of ``now`` and any ``v1`` matches the
    HMAC of ``"<t>.<body>"`` (several ``v1`` are accepted so a secret can be rotated).
    ``body`` must be the raw request bytes, not re-serialized JSON.
    """
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    # Compared as bytes (a non-ASCII or surrogate-escaped header value is a mismatch,
    # not a TypeError), every candidate in turn: the timing does not tell which matched.
    return matches_any(candidates, _mac(body, secret, t))
