"""The daemon's configuration: one TOML file decoded into frozen, validated msgspec Structs.

``load_config``/``parse_config`` turn TOML into a :class:`Config`; every value is checked
while decoding, and any problem becomes one :class:`~bridge._errors.ConfigError` that names
the file, the field path (``routes[2].stream.buffer``) and what is wrong.
``dump_config`` writes the resolved configuration back as TOML, and ``match_route`` picks
the route for a new call. docs/configuration.md is the user-facing reference.
"""

from __future__ import annotations

import functools
import importlib.resources
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

import msgspec

from .._durations import DURATION_HINT as _DURATION_HINT
from .._durations import parse_duration
from .._errors import ConfigError
from ..dialects import (
    DEFAULT_ENCAPSULATION,
    FormatError,
    OptionError,
    carriers,
    dialect,
    encapsulations,
)
from ..transports import HOST_PORT_FORM, host_problem, parse_host_port

__all__ = [
    "AdminConfig",
    "AppConfig",
    "AppMode",
    "AudioSocketConfig",
    "AuthConfig",
    "CallbackConfig",
    "CallbacksConfig",
    "Carrier",
    "ClusterConfig",
    "Codec",
    "Config",
    "DaemonConfig",
    "DialectOptions",
    "Duration",
    "Encapsulation",
    "KeyValueMatch",
    "Listener",
    "LogFormat",
    "LogLevel",
    "MatchConfig",
    "OrphanPolicy",
    "RecordsConfig",
    "RouteConfig",
    "RtpConfig",
    "SampleRate",
    "StreamConfig",
    "StreamOverrides",
    "TlsVersion",
    "WebSocketConfig",
    "dump_config",
    "load_config",
    "match_route",
    "parse_config",
    "parse_duration",
    "parse_listen",
    "parse_networks",
]

# --------------------------------------------------------------------------- value types

LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]
LogFormat: TypeAlias = Literal["json", "console"]
Listener: TypeAlias = Literal["audiosocket", "websocket", "rtp"]
#: A dialect name from the registry (``bridge.dialects.carriers()``/``encapsulations()``):
#: checked against it, so that a dialect is named in one place only.
Carrier: TypeAlias = str
Encapsulation: TypeAlias = str
SampleRate: TypeAlias = Literal[8000, 16000, 24000, 48000]
#: "" = the encapsulation's default codec (its registry entry's ``app_leg.default_codec``).
Codec: TypeAlias = Literal["", "pcmu", "pcma", "l16"]
#: A dialect's own keys (``carrier_options``, ``app.options``): checked against its
#: registry entry.
DialectOptions: TypeAlias = dict[str, str | int | bool]
AppMode: TypeAlias = Literal["connect", "accept"]
#: What a carrier re-dial gets when the stream it resumes died with its process.
OrphanPolicy: TypeAlias = Literal["refuse", "new"]

# A duration is a TOML string with a unit. The Meta marker is how error reporting
# recognises a duration field (to explain the syntax when someone writes a bare number).
Duration: TypeAlias = Annotated[str, msgspec.Meta(extra={"bridge_type": "duration"})]


def _fmt_seconds(seconds: float) -> str:
    """A human duration for error messages (the inverse of parse_duration, roughly)."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


@functools.lru_cache(maxsize=64)
def parse_listen(text: str) -> tuple[str, int] | None:
    """``"host:port"`` → ``(host, port)``; ``"[::1]:8080"`` → ``("::1", 8080)``; ``""`` → None.

    ``transports.parse_host_port`` for an address to bind (port 0 = any free port). The
    IPv6 brackets are dropped so the host can be handed to a socket call as is. Raises
    ValueError with an example of the expected form.
    """
    if text == "":
        return None
    try:
        return parse_host_port(text, listen=True)
    except ValueError as exc:
        message = str(exc)
        if message.endswith(HOST_PORT_FORM):
            # The listener keys take one more form: say so where the form was wrong.
            raise ValueError(f'{message} ("" disables)') from None
        raise


# --------------------------------------------------------------------------- validation helpers


class _FieldError(ValueError):
    """A validation failure at ``field`` (relative to the struct that raises it).

    msgspec wraps a ValueError from ``__post_init__`` into a ValidationError that points
    at the struct; the original exception is its ``__cause__``, so ``_to_config_error``
    can append ``field`` and report the exact path.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# A check takes the field name and its value and raises _FieldError.
_Check: TypeAlias = Callable[[str, Any], None]


def _int_range(lo: int, hi: int) -> _Check:
    def check(name: str, value: int) -> None:
        if not lo <= value <= hi:
            raise _FieldError(name, f"must be between {lo} and {hi}, got {value}")

    return check


def _duration(lo: float = 0.0, hi: float = math.inf, *, positive: bool = False) -> _Check:
    """Duration syntax plus bounds; ``positive`` forbids zero (timeouts, intervals)."""

    def check(name: str, value: str) -> None:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _FieldError(name, str(exc)) from None
        if positive and seconds <= 0:
            raise _FieldError(name, f"must be greater than zero, got {value!r}")
        if not lo <= seconds <= hi:
            bound = (
                f"between {_fmt_seconds(lo)} and {_fmt_seconds(hi)}"
                if hi != math.inf
                else f"at least {_fmt_seconds(lo)}"
            )
            raise _FieldError(name, f"must be {bound}, got {value!r}")

    return check


def _listen(name: str, value: str) -> None:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise _FieldError(name, str(exc)) from None


def _one_of(names: Callable[[], tuple[str, ...]]) -> _Check:
    """A name from the dialect registry (``names()`` is read when checked)."""

    def check(name: str, value: str) -> None:
        allowed = names()
        if value not in allowed:
            listed = ", ".join(repr(n) for n in allowed)
            raise _FieldError(name, f"invalid value {value!r}; allowed: {listed}")

    return check


def _dialect_options(
    field: str, resolve: Callable[[Mapping[str, object]], object], given: Mapping[str, object]
) -> None:
    """A dialect's own keys, checked by its registry entry; the error names the key."""
    try:
        resolve(given)
    except OptionError as exc:
        raise _FieldError(f"{field}.{exc.name}", exc.message) from None


def _nonempty(name: str, value: str) -> None:
    if not value:
        raise _FieldError(name, "must not be empty")


def _credential(name: str, value: str) -> None:
    """Tokens and secrets: visible ASCII only (0x21-0x7E).

    They are compared as bytes with what a peer sends in a URL or a header, where only
    ASCII survives unchanged (HTTP header bytes decode as ISO-8859-1, query strings as
    UTF-8): a non-ASCII token could never be presented correctly, even by the carrier
    that was given it. Whitespace would be stripped by HTTP. The error names the
    position, never the secret.
    """
    for i, ch in enumerate(value):
        if not "\x21" <= ch <= "\x7e":
            what = "whitespace" if ch.isspace() else f"U+{ord(ch):04X}"
            raise _FieldError(
                name,
                f"must be visible ASCII characters only (a credential is compared byte for "
                f"byte with what a peer sends in a URL or header); character {i + 1} is {what}",
            )


_PTIMES_MS = (10, 20, 30, 40, 50, 60)


def _ptime(name: str, value: str) -> None:
    _duration(positive=True)(name, value)
    ms = parse_duration(value) * 1000
    if not any(math.isclose(ms, allowed, abs_tol=1e-6) for allowed in _PTIMES_MS):
        raise _FieldError(name, f"must be one of 10ms, 20ms, 30ms, 40ms, 50ms, 60ms, got {value!r}")


def _thresholds(name: str, value: tuple[int, ...]) -> None:
    for i, pct in enumerate(value):
        if not 1 <= pct <= 99:
            raise _FieldError(f"{name}[{i}]", f"a threshold is a percentage 1..99, got {pct}")
        if i and pct <= value[i - 1]:
            raise _FieldError(
                f"{name}[{i}]",
                f"thresholds must be strictly ascending, got {pct} after {value[i - 1]}",
            )


_KIB = 1024
_MIB = 1024 * 1024


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config struct: runs the per-field ``_CHECKS``, then ``_validate``.

    msgspec calls ``__post_init__`` during ``convert`` (and on direct construction and
    ``structs.replace``), so a Struct that exists is a valid one.
    """

    _CHECKS: ClassVar[Mapping[str, _Check]] = {}

    def __post_init__(self) -> None:
        for name, check in self._CHECKS.items():
            value = getattr(self, name)
            if value is not None:  # None in StreamOverrides means "inherit"
                check(name, value)
        self._validate()

    def _validate(self) -> None:
        """Cross-field rules; overridden where a section has any."""


# --------------------------------------------------------------------------- sections


class DaemonConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[daemon]``: process-wide behaviour."""

    log_level: LogLevel = "info"
    log_format: LogFormat = "json"
    drain_timeout: Duration = "30s"
    max_streams: int = 1000
    #: Read every stream's sockets through one epoll wake-up (``transports.Poller``);
    #: false gives each leg its own reader task, as before (a fallback, not a tuning knob).
    read_poller: bool = True
    #: WARNING lines about bad peers (bad input, failed auth, refused connections) per
    #: ``bad_input_log_interval``, sliding; the rest are counted in one summary line per
    #: interval. Metrics count every one regardless.
    bad_input_log_per_interval: int = 20
    bad_input_log_interval: Duration = "10s"

    _CHECKS = {
        "drain_timeout": _duration(),
        "max_streams": _int_range(1, 1_000_000),
        "bad_input_log_per_interval": _int_range(0, 100_000),
        "bad_input_log_interval": _duration(0.1, 3600.0),
    }

    @property
    def drain_timeout_s(self) -> float:
        return parse_duration(self.drain_timeout)

    @property
    def bad_input_log_interval_s(self) -> float:
        return parse_duration(self.bad_input_log_interval)


class AdminConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[admin]``: the HTTP admin API (/healthz, /readyz, /metrics, /v1/*)."""

    listen: str = "127.0.0.1:8081"
    token: str = ""
    #: Open connections in all (503 beyond) and from one client address (429 beyond).
    max_connections: int = 128
    max_connections_per_peer: int = 16
    #: Requests per second per client address (token bucket, 429 beyond); 0 = no limit.
    rate_limit: int = 50
    rate_burst: int = 100
    #: From a request's first byte to its last (slow headers or body: 408).
    request_timeout: Duration = "5s"
    #: A connection with no request under way is closed after this.
    idle_timeout: Duration = "5s"

    _CHECKS = {
        "listen": _listen,
        "token": _credential,
        "max_connections": _int_range(1, 1_000_000),
        "max_connections_per_peer": _int_range(1, 1_000_000),
        "rate_limit": _int_range(0, 1_000_000),
        "rate_burst": _int_range(1, 1_000_000),
        "request_timeout": _duration(lo=0.1, hi=300.0),
        "idle_timeout": _duration(lo=0.1, hi=3600.0),
    }

    @property
    def listen_addr(self) -> tuple[str, int] | None:
        return parse_listen(self.listen)

    @property
    def request_timeout_s(self) -> float:
        return parse_duration(self.request_timeout)

    @property
    def idle_timeout_s(self) -> float:
        return parse_duration(self.idle_timeout)


class AudioSocketConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[audiosocket]``: the Asterisk AudioSocket TCP listener."""

    listen: str = "127.0.0.1:9092"
    reuse_port: bool = False
    first_frame_timeout: Duration = "5s"
    max_frame_bytes: int = 8192
    #: Connections accepted whose UUID frame has not arrived yet, in all and from one
    #: source address (IPv6: one /64; a per-peer limit above the total acts as the total).
    #: Over either, a new connection is closed at once.
    max_pending: int = 1024
    max_pending_per_peer: int = 16

    _CHECKS = {
        "listen": _listen,
        "first_frame_timeout": _duration(positive=True),
        "max_frame_bytes": _int_range(64, 65535),
        "max_pending": _int_range(1, 1_000_000),
        "max_pending_per_peer": _int_range(1, 1_000_000),
    }

    @property
    def listen_addr(self) -> tuple[str, int] | None:
        return parse_listen(self.listen)

    @property
    def first_frame_timeout_s(self) -> float:
        return parse_duration(self.first_frame_timeout)


TlsVersion: TypeAlias = Literal["1.2", "1.3"]
IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=64)
def parse_networks(cidrs: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """``("10.0.0.0/8", "::1")`` → networks (a bare address is a /32 or /128).

    Strict: host bits set after the prefix (``"10.0.0.1/8"``) are an error, since they
    usually mean a typo. Raises ValueError naming the entry.
    """
    out: list[IpNetwork] = []
    for i, text in enumerate(cidrs):
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            hint = ""
            try:
                hint = f"; did you mean {str(ipaddress.ip_network(text, strict=False))!r}?"
            except ValueError:
                hint = '; expected an address or a CIDR block, e.g. "10.0.0.0/8" or "fd00::/8"'
            raise _FieldError(f"[{i}]", f"{exc}{hint}") from None
    return tuple(out)


def _networks(name: str, value: tuple[str, ...]) -> None:
    try:
        parse_networks(value)
    except _FieldError as exc:
        raise _FieldError(name + exc.field, exc.message) from None


class WebSocketConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[websocket]``: the WebSocket listener (carrier media streams, app connections)."""

    listen: str = "127.0.0.1:8080"
    reuse_port: bool = False
    #: From TCP accept to the carrier's ``start`` message (or, for an accept-mode app,
    #: to the end of the upgrade): one deadline for the whole handshake.
    handshake_timeout: Duration = "5s"
    max_message_bytes: int = 1 * _MIB
    #: Connections in their handshake (see handshake_timeout), in all and from one source
    #: address (IPv6: one /64). Over the per-peer limit a new connection is closed at
    #: once; over the total it gets a canned 503.
    max_handshakes: int = 1024
    max_handshakes_per_peer: int = 16
    #: PEM certificate chain (the server's certificate first) and its private key: the
    #: listener serves ``wss://``. Both or neither; their contents are checked by
    #: ``check_tls_files`` (check-config, start, SIGHUP), not here.
    tls_cert: str = ""
    tls_key: str = ""
    tls_min_version: TlsVersion = "1.2"
    tls_handshake_timeout: Duration = "5s"
    #: TCP peers (CIDRs) whose X-Forwarded-For/-Proto/-Host headers are believed.
    trusted_proxies: tuple[str, ...] = ()

    _CHECKS = {
        "listen": _listen,
        "handshake_timeout": _duration(positive=True),
        "max_message_bytes": _int_range(1 * _KIB, 64 * _MIB),
        "max_handshakes": _int_range(1, 1_000_000),
        "max_handshakes_per_peer": _int_range(1, 1_000_000),
        "tls_handshake_timeout": _duration(positive=True),
        "trusted_proxies": _networks,
    }

    def _validate(self) -> None:
        if self.tls_cert and not self.tls_key:
            raise _FieldError("tls_key", "is required when tls_cert is set (the certificate's private key)")
        if self.tls_key and not self.tls_cert:
            raise _FieldError("tls_cert", "is required when tls_key is set (the certificate chain, PEM)")

    @property
    def listen_addr(self) -> tuple[str, int] | None:
        return parse_listen(self.listen)

    @property
    def handshake_timeout_s(self) -> float:
        return parse_duration(self.handshake_timeout)

    @property
    def tls(self) -> bool:
        """The listener terminates TLS itself (serves ``wss://``)."""
        return bool(self.tls_cert)

    @property
    def tls_handshake_timeout_s(self) -> float:
        return parse_duration(self.tls_handshake_timeout)

    @property
    def trusted_networks(self) -> tuple[IpNetwork, ...]:
        return parse_networks(self.trusted_proxies)


_PORTS_RE = re.compile(r"(\d+)-(\d+)")


def _parse_ports(text: str) -> tuple[int, int]:
    m = _PORTS_RE.fullmatch(text)
    if m is None:
        raise ValueError(f'invalid port range {text!r}; expected "first-last", e.g. "40000-40999"')
    first, last = int(m[1]), int(m[2])
    if not 1024 <= first <= 65535 or not 1024 <= last <= 65535:
        raise ValueError(f"ports must lie within 1024..65535, got {text!r}")
    if first > last:
        raise ValueError(f'the range is descending: write "{last}-{first}"')
    return first, last


def _ports(name: str, value: str) -> None:
    try:
        _parse_ports(value)
    except ValueError as exc:
        raise _FieldError(name, str(exc)) from None


def _bind_host(name: str, value: str) -> None:
    # Bare IPv6 is what a UDP bind() takes; brackets only belong in "host:port" forms.
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise _FieldError(
                name, f"{value!r} is not a valid IPv6 address (no brackets here)"
            ) from None
        return
    problem = host_problem(value, listen=True)
    if problem is not None:
        raise _FieldError(name, problem)


class RtpConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[rtp]``: the RTP port pool (one UDP port per stream)."""

    bind: str = "127.0.0.1"
    ports: str = "40000-40999"
    timeout: Duration = "10s"
    latch_packets: int = 4
    jitter_start: Duration = "20ms"
    jitter_max: Duration = "200ms"

    _CHECKS = {
        "bind": _bind_host,
        "ports": _ports,
        "timeout": _duration(positive=True),
        "latch_packets": _int_range(1, 32),
        "jitter_start": _duration(),
        "jitter_max": _duration(positive=True),
    }

    def _validate(self) -> None:
        if self.jitter_start_s > self.jitter_max_s:
            raise _FieldError(
                "jitter_start",
                f"must not exceed jitter_max ({self.jitter_max!r}), got {self.jitter_start!r}",
            )

    @property
    def ports_range(self) -> tuple[int, int]:
        """``(first, last)``, both inclusive."""
        return _parse_ports(self.ports)

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)

    @property
    def jitter_start_s(self) -> float:
        return parse_duration(self.jitter_start)

    @property
    def jitter_max_s(self) -> float:
        return parse_duration(self.jitter_max)


class RecordsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[records]``: the SQLite file of stream records and the event outbox."""

    path: str = "bridge.sqlite3"
    retention: Duration = "7d"

    _CHECKS = {"path": _nonempty, "retention": _duration(positive=True)}

    @property
    def retention_s(self) -> float:
        return parse_duration(self.retention)


class CallbacksConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[callbacks]``: delivery policy of status callbacks (all routes)."""

    timeout: Duration = "5s"
    backoff: Duration = "1s"
    max_backoff: Duration = "5m"
    give_up_after: Duration = "24h"
    concurrency: int = 16

    _CHECKS = {
        "timeout": _duration(positive=True),
        "backoff": _duration(positive=True),
        "max_backoff": _duration(positive=True),
        "give_up_after": _duration(positive=True),
        "concurrency": _int_range(1, 1024),
    }

    def _validate(self) -> None:
        if self.max_backoff_s < self.backoff_s:
            raise _FieldError(
                "max_backoff",
                f"must not be below backoff ({self.backoff!r}), got {self.max_backoff!r}",
            )

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)

    @property
    def backoff_s(self) -> float:
        return parse_duration(self.backoff)

    @property
    def max_backoff_s(self) -> float:
        return parse_duration(self.max_backoff)

    @property
    def give_up_after_s(self) -> float:
        return parse_duration(self.give_up_after)


_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REDIS_URL_RE = re.compile(r"(redis|rediss|unix)://.+")


def _node_id(name: str, value: str) -> None:
    if value and not _NODE_ID_RE.fullmatch(value):
        raise _FieldError(name, f"must be 1-64 letters, digits, '_', '.' or '-', got {value!r}")


def _redis_url(name: str, value: str) -> None:
    if not _REDIS_URL_RE.fullmatch(value):
        raise _FieldError(
            name,
            f'must be a redis://, rediss:// or unix:// URL, e.g. "redis://127.0.0.1:6379/0", '
            f"got {_redact_url(value)!r}",
        )


class ClusterConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[cluster]``: several bridge processes sharing a stream registry and the event
    stream in Redis (docs/cluster.md). Off by default: one process needs none of it."""

    enabled: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key, so several clusters can share one Redis.
    key_prefix: str = "bridge"
    #: This process's name in the cluster; "" = "<hostname>-<pid>". Unique per process.
    node_id: str = ""
    #: Shared secret of the cluster: authenticates every hand-off between processes
    #: (HMAC-SHA256, compared as bytes). Required when enabled.
    secret: str = ""
    #: A process whose lease is not renewed for this long is dead: its streams end with
    #: DroppedStream (emitted once, by a survivor) and a survivor delivers its events.
    lease: Duration = "5s"
    #: The internal cluster port (hand-offs across machines, admin forwarding).
    listen: str = "127.0.0.1:0"
    #: host:port other processes reach ``listen`` on; "" = the bound address of ``listen``.
    advertise: str = ""
    #: Directory of the Unix sockets that pass connections between the processes of one
    #: host (SCM_RIGHTS); "" = pass nothing by descriptor, relay over TCP instead.
    socket_dir: str = "/run/bridge"
    #: Ended streams stay findable (GET /v1/streams/{id} on any process) this long.
    ended_ttl: Duration = "1h"

    _CHECKS = {
        "redis_url": _redis_url,
        "key_prefix": _node_id,
        "node_id": _node_id,
        "secret": _credential,
        "lease": _duration(1.0, 300.0),
        "listen": _listen,
        "advertise": _listen,
        "ended_ttl": _duration(1.0, 30 * 86400.0),
    }

    def _validate(self) -> None:
        if not self.enabled:
            return
        if len(self.secret) < 16:
            raise _FieldError(
                "secret",
                "must be set (at least 16 characters) when the cluster is enabled: every "
                "process of the cluster shares it",
            )
        if self.listen_addr is None:
            raise _FieldError("listen", "must be set when the cluster is enabled")
        if not self.key_prefix:
            raise _FieldError("key_prefix", "must not be empty")

    @property
    def lease_s(self) -> float:
        return parse_duration(self.lease)

    @property
    def ended_ttl_s(self) -> float:
        return parse_duration(self.ended_ttl)

    @property
    def listen_addr(self) -> tuple[str, int] | None:
        return parse_listen(self.listen)

    @property
    def advertise_addr(self) -> tuple[str, int] | None:
        return parse_listen(self.advertise)


# One table of per-field checks shared by [stream] and a route's stream overrides, so a
# value is judged the same wherever it is written.
_STREAM_CHECKS: Mapping[str, _Check] = {
    "ptime": _ptime,
    "retries": _int_range(0, 10),
    "backoff": _duration(),
    "buffer": _duration(1.0, 600.0),
    "degraded_at": _thresholds,
    "timeout": _duration(positive=True),
    "connect_timeout": _duration(positive=True),
    "send_timeout": _duration(positive=True),
    "ping_interval": _duration(positive=True),
    "ping_timeout": _duration(positive=True),
    "close_timeout": _duration(positive=True),
    "max_message_bytes": _int_range(1 * _KIB, 64 * _MIB),
    "send_ahead": _int_range(0, 50),
    "reconnect_window": _duration(),
    "accept_timeout": _duration(positive=True),
}


class StreamConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[stream]``: per-stream policy, the defaults of every route."""

    ptime: Duration = "20ms"
    retries: int = 2
    backoff: Duration = "500ms"
    buffer: Duration = "40s"
    degraded_at: tuple[int, ...] = (30, 60, 90)
    timeout: Duration = "4h"
    connect_timeout: Duration = "5s"
    send_timeout: Duration = "2s"
    ping_interval: Duration = "10s"
    ping_timeout: Duration = "10s"
    close_timeout: Duration = "2s"
    max_message_bytes: int = 1 * _MIB
    hold_audio: str = ""
    send_ahead: int = 0
    reconnect_window: Duration = "0s"
    accept_timeout: Duration = "10s"
    #: Trim standing latency of a real-time app stream (media.PlayoutPolicy); turn it off
    #: for an app that keeps a deliberate lead while sending at exactly real time.
    trim_latency: bool = True

    _CHECKS = _STREAM_CHECKS

    @property
    def ptime_s(self) -> float:
        return parse_duration(self.ptime)

    @property
    def backoff_s(self) -> float:
        return parse_duration(self.backoff)

    @property
    def buffer_s(self) -> float:
        return parse_duration(self.buffer)

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)

    @property
    def connect_timeout_s(self) -> float:
        return parse_duration(self.connect_timeout)

    @property
    def send_timeout_s(self) -> float:
        return parse_duration(self.send_timeout)

    @property
    def ping_interval_s(self) -> float:
        return parse_duration(self.ping_interval)

    @property
    def ping_timeout_s(self) -> float:
        return parse_duration(self.ping_timeout)

    @property
    def close_timeout_s(self) -> float:
        return parse_duration(self.close_timeout)

    @property
    def reconnect_window_s(self) -> float:
        return parse_duration(self.reconnect_window)

    @property
    def accept_timeout_s(self) -> float:
        return parse_duration(self.accept_timeout)


class StreamOverrides(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A route's ``stream = {...}``: the keys of [stream], each optional (None = inherit)."""

    ptime: Duration | None = None
    retries: int | None = None
    backoff: Duration | None = None
    buffer: Duration | None = None
    degraded_at: tuple[int, ...] | None = None
    timeout: Duration | None = None
    connect_timeout: Duration | None = None
    send_timeout: Duration | None = None
    ping_interval: Duration | None = None
    ping_timeout: Duration | None = None
    close_timeout: Duration | None = None
    max_message_bytes: int | None = None
    hold_audio: str | None = None
    send_ahead: int | None = None
    reconnect_window: Duration | None = None
    accept_timeout: Duration | None = None
    trim_latency: bool | None = None

    _CHECKS = _STREAM_CHECKS


# Overrides must mirror [stream] key for key, or merging would silently drop a setting.
assert StreamOverrides.__struct_fields__ == StreamConfig.__struct_fields__


# --------------------------------------------------------------------------- routes

_ROUTE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# RFC 9110 token characters: what a header name may consist of.
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class KeyValueMatch(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``match.header`` / ``match.query``: the handshake must carry ``name`` = ``value``."""

    name: str
    value: str

    _CHECKS = {"name": _nonempty}


class MatchConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A route's ``match``: which calls it takes."""

    listener: Listener
    path: str = ""
    header: KeyValueMatch | None = None
    query: KeyValueMatch | None = None
    #: The upgrade request offers this WebSocket subprotocol (Asterisk chan_websocket
    #: offers "media"): routes by subprotocol instead of, or as well as, by path.
    subprotocol: str = ""

    def _validate(self) -> None:
        ws = self.listener == "websocket"
        # AudioSocket and RTP calls have no HTTP handshake, so nothing to match on.
        for name in ("path", "header", "query", "subprotocol"):
            if getattr(self, name) not in ("", None) and not ws:
                raise _FieldError(
                    name, f'only websocket routes match on a {name}, this one is "{self.listener}"'
                )
        if self.path:
            if not self.path.startswith("/"):
                raise _FieldError("path", f'must start with "/", e.g. "/twilio", got {self.path!r}')
            if "*" in self.path[:-1] or (self.path.endswith("*") and not self.path.endswith("/*")):
                raise _FieldError(
                    "path", f'"*" is only allowed as a final "/*" (prefix match), got {self.path!r}'
                )
        if self.header is not None and not _HEADER_NAME_RE.fullmatch(self.header.name):
            raise _FieldError(
                "header.name", f"{self.header.name!r} is not a valid HTTP header name"
            )
        if self.subprotocol and not _HEADER_NAME_RE.fullmatch(self.subprotocol):
            # RFC 6455 §4.1: a subprotocol is a token.
            raise _FieldError("subprotocol", f"{self.subprotocol!r} is not a valid token")

    def matches(
        self,
        listener: str,
        path: str,
        headers: Mapping[str, str] | None,
        query: Mapping[str, str] | None,
        subprotocols: Sequence[str] = (),
    ) -> bool:
        """Whether a call arriving with these properties fits (header names case-insensitive)."""
        if listener != self.listener:
            return False
        if self.subprotocol and self.subprotocol not in subprotocols:
            return False
        if self.path:
            if self.path.endswith("/*"):
                if not path.startswith(self.path[:-1]):
                    return False
            elif path != self.path:
                return False
        if self.header is not None:
            if headers is None:
                return False
            wanted = self.header.name.lower()
            if not any(k.lower() == wanted and v == self.header.value for k, v in headers.items()):
                return False
        return self.query is None or (
            query is not None and query.get(self.query.name) == self.query.value
        )


def _check_url(name: str, value: str, schemes: tuple[str, ...], example: str) -> None:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in schemes:
        raise _FieldError(
            name,
            f"must be a {' or '.join(s + '://' for s in schemes)} URL, e.g. {example!r}, got {value!r}",
        )
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily, on access
    except ValueError:
        raise _FieldError(name, f"invalid port in {value!r}") from None
    if not parts.hostname:
        raise _FieldError(name, f"has no host, e.g. {example!r}, got {value!r}")


class AppConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A route's ``app``: the application leg."""

    url: str = ""
    encapsulation: Encapsulation = DEFAULT_ENCAPSULATION
    sample_rate: SampleRate = 8000
    codec: Codec = ""
    mode: AppMode = "connect"
    token: str = ""
    headers: dict[str, str] = {}
    ca_file: str = ""
    #: The encapsulation's own keys (its registry entry's ``app_leg.options``).
    options: DialectOptions = {}

    _CHECKS = {"token": _credential, "encapsulation": _one_of(encapsulations)}

    @property
    def is_echo(self) -> bool:
        """The built-in echo application (``url = "echo:"``)."""
        return self.url == "echo:"

    def _validate(self) -> None:
        if self.mode == "accept":
            # The app dials in to bridge, so there is nothing to connect to.
            if self.url:
                raise _FieldError(
                    "url",
                    f'must be "" when mode = "accept" (the app connects to bridge), got {self.url!r}',
                )
            if self.headers:
                raise _FieldError(
                    "headers", 'handshake headers are only sent when mode = "connect"'
                )
        else:
            if not self.url:
                raise _FieldError(
                    "url", 'is required: "ws://host:port/path", "wss://..." or "echo:"'
                )
            if self.url != "echo:":
                _check_url("url", self.url, ("ws", "wss"), "ws://127.0.0.1:9000/agent")
            if self.token:
                raise _FieldError(
                    "token", 'is only used when mode = "accept"; for connect use headers'
                )
        if self.ca_file and not self.url.startswith("wss://"):
            raise _FieldError("ca_file", "only applies to wss:// URLs")
        if self.headers and self.url == "echo:":
            raise _FieldError("headers", "the built-in echo application takes no handshake headers")
        for key, value in self.headers.items():
            if not _HEADER_NAME_RE.fullmatch(key):
                raise _FieldError("headers", f"{key!r} is not a valid HTTP header name")
            if any(c in value for c in "\r\n\0"):
                raise _FieldError("headers", f"the value of {key!r} contains a line break or NUL")
        spec = dialect(self.encapsulation)
        try:
            spec.resolve_format(self.codec, self.sample_rate)
        except FormatError as exc:
            raise _FieldError(exc.field, exc.message) from None
        assert spec.app_leg is not None  # encapsulations() lists only these
        _dialect_options("options", spec.app_leg.resolve_options, self.options)


class CallbackConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A route's ``callback``: where its status events are POSTed."""

    url: str
    secret: str = ""

    _CHECKS = {"secret": _credential}

    def _validate(self) -> None:
        _check_url("url", self.url, ("http", "https"), "https://example.com/events")


class AuthConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A websocket route's ``auth``: what a carrier's handshake must prove."""

    token: str = ""
    twilio_auth_token: str = ""
    #: The scheme, host and path prefix under which the carrier reaches this route
    #: (``"wss://voice.example.com"``): the base of the URL Twilio signed, in place of
    #: the one bridge reconstructs from the request.
    public_url: str = ""

    def _validate(self) -> None:
        if self.public_url:
            _check_url("public_url", self.public_url, ("wss", "ws"), "wss://voice.example.com")
            parts = urllib.parse.urlsplit(self.public_url)
            if parts.query or parts.fragment or self.public_url.endswith("?"):
                raise _FieldError(
                    "public_url",
                    "is a base URL (scheme, host, optional path prefix) without a query or "
                    f"fragment; the request's own path and query are appended, got {self.public_url!r}",
                )

    _CHECKS = {"token": _credential, "twilio_auth_token": _credential}


class RouteConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[routes]]`` entry: which calls (match) go to which application (app)."""

    name: str
    match: MatchConfig
    carrier: Carrier | None = None
    #: The carrier's own keys (its registry entry's ``call_leg.options``).
    carrier_options: DialectOptions = {}
    app: AppConfig
    callback: CallbackConfig | None = None
    auth: AuthConfig | None = None
    stream: StreamOverrides | None = None
    #: Cluster mode: a carrier re-dial whose stream died with its process is refused
    #: ("refuse") or starts a new stream ("new", what a single process does after the
    #: reconnect window).
    orphan: OrphanPolicy = "new"

    def _validate(self) -> None:
        if not _ROUTE_NAME_RE.fullmatch(self.name):
            raise _FieldError(
                "name", f"must be letters, digits, '_', '.' or '-', got {self.name!r}"
            )
        ws = self.match.listener == "websocket"
        names = carriers()
        if ws and self.carrier is None:
            listed = ", ".join(f'"{n}"' for n in names)
            raise _FieldError("carrier", f"is required for websocket routes: {listed}")
        if not ws and self.carrier is not None:
            raise _FieldError(
                "carrier",
                f'only websocket routes have a carrier, this one is "{self.match.listener}"',
            )
        if not ws and self.carrier_options:
            raise _FieldError("carrier_options", "only websocket routes have a carrier")
        call_leg = None
        if self.carrier is not None:
            _one_of(carriers)("carrier", self.carrier)
            call_leg = dialect(self.carrier).call_leg
            assert call_leg is not None  # carriers() lists only these
            _dialect_options("carrier_options", call_leg.resolve_options, self.carrier_options)
        if self.auth is not None:
            if not ws:
                raise _FieldError("auth", "only websocket routes authenticate a handshake")
            if self.auth.twilio_auth_token and (call_leg is None or not call_leg.signs_handshake):
                signers = [
                    n for n in names if (leg := dialect(n).call_leg) and leg.signs_handshake
                ]
                raise _FieldError(
                    "auth.twilio_auth_token",
                    "only applies to a carrier that signs its handshake: "
                    + ", ".join(f'carrier = "{n}"' for n in signers),
                )
            if self.auth.public_url and not self.auth.twilio_auth_token:
                raise _FieldError(
                    "auth.public_url",
                    "is the base of the URL Twilio signs; it needs auth.twilio_auth_token",
                )


# --------------------------------------------------------------------------- the whole file


@functools.lru_cache(maxsize=1024)
def _merge_stream(base: StreamConfig, overrides: StreamOverrides | None) -> StreamConfig:
    """``base`` with every non-None override applied (cached: both are frozen and hashable)."""
    if overrides is None:
        return base
    changes = {
        name: value
        for name in overrides.__struct_fields__
        if (value := getattr(overrides, name)) is not None
    }
    return msgspec.structs.replace(base, **changes) if changes else base


class Config(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration file."""

    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    audiosocket: AudioSocketConfig = msgspec.field(default_factory=AudioSocketConfig)
    websocket: WebSocketConfig = msgspec.field(default_factory=WebSocketConfig)
    rtp: RtpConfig = msgspec.field(default_factory=RtpConfig)
    records: RecordsConfig = msgspec.field(default_factory=RecordsConfig)
    callbacks: CallbacksConfig = msgspec.field(default_factory=CallbacksConfig)
    stream: StreamConfig = msgspec.field(default_factory=StreamConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    routes: tuple[RouteConfig, ...] = ()

    def _validate(self) -> None:
        seen: dict[str, int] = {}
        for i, route in enumerate(self.routes):
            if route.name in seen:
                raise _FieldError(
                    f"routes[{i}].name",
                    f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])",
                )
            seen[route.name] = i
        # Two TCP listeners on one address would fail at bind time; say so now.
        bound: dict[tuple[str, int], str] = {}
        for section in ("admin", "audiosocket", "websocket", "cluster"):
            if section == "cluster" and not self.cluster.enabled:
                continue
            addr = parse_listen(getattr(self, section).listen)
            if addr is None or addr[1] == 0:  # port 0: each gets its own free port
                continue
            if addr in bound:
                raise _FieldError(f"{section}.listen", f"same address as {bound[addr]}.listen")
            bound[addr] = section

    def route_stream(self, route: RouteConfig) -> StreamConfig:
        """The effective stream settings of ``route``: its overrides merged over [stream]."""
        return _merge_stream(self.stream, route.stream)

    def routes_for(self, listener: str) -> tuple[RouteConfig, ...]:
        """The routes of one listener, in file order."""
        return tuple(r for r in self.routes if r.match.listener == listener)

    def route_by_name(self, name: str) -> RouteConfig | None:
        """The route called ``name`` (names are unique), or None."""
        return next((r for r in self.routes if r.name == name), None)


def match_route(
    config: Config,
    listener: str,
    path: str = "",
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    subprotocols: Sequence[str] = (),
) -> RouteConfig | None:
    """The first route, in file order, that takes a call with these properties, or None.

    ``path`` is the request path without the query string (one is stripped if present);
    header names compare case-insensitively, query names, subprotocols and all values
    exactly.
    """
    path = path.partition("?")[0]
    for route in config.routes:
        if route.match.matches(listener, path, headers, query, subprotocols):
            return route
    return None


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file; ``None`` loads the embedded ``bridge/default.toml``."""
    if path is None:
        text = importlib.resources.files("bridge").joinpath("default.toml").read_text("utf-8")
        return parse_config(text, file=None)
    file = os.fspath(path)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=file) from None
    return parse_config(text, file=file)


def parse_config(text: str, *, file: str | None = None) -> Config:
    """Validate TOML text; ``file`` only labels errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)".
        raise ConfigError(f"TOML syntax error: {exc}", path="", file=file) from None
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise _to_config_error(exc, file) from None


# --------------------------------------------------------------------------- error reporting

_AT_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
_PATH_TOKEN_RE = re.compile(r"\.(\w+)|\[(\d+|\.\.\.)\]")
_UNKNOWN_RE = re.compile(r"Object contains unknown field `(?P<key>[^`]*)`")
_MISSING_RE = re.compile(r"Object missing required field `(?P<key>[^`]*)`")
_ENUM_RE = re.compile(r"Invalid enum value (?P<value>.*)")


def _join(base: str, rel: str) -> str:
    if not base:
        return rel
    if not rel:
        return base
    return base + rel if rel.startswith("[") else f"{base}.{rel}"


def _tokens(at: str) -> Iterator[str | int]:
    for m in _PATH_TOKEN_RE.finditer(at):
        if m[1] is not None:
            yield m[1]
        else:
            yield int(m[2]) if m[2].isdigit() else m[2]


def _type_at(tokens: list[str | int]) -> msgspec.inspect.Type | None:
    """The msgspec type found by walking ``tokens`` down from Config (None if lost)."""
    t: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for tok in tokens:
        t = _unwrap(t)
        if isinstance(tok, str) and tok != "..." and isinstance(t, msgspec.inspect.StructType):
            field = next((f for f in t.fields if f.encode_name == tok), None)
            if field is None:
                return None
            t = field.type
        elif isinstance(t, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
            t = t.item_type
        elif isinstance(t, msgspec.inspect.DictType):
            t = t.value_type
        else:
            return None
    return t


def _unwrap(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """Strip Annotated metadata and ``| None`` to reach the type that matters."""
    while True:
        if isinstance(t, msgspec.inspect.Metadata):
            t = t.type
        elif isinstance(t, msgspec.inspect.UnionType):
            rest = [m for m in t.types if not isinstance(m, msgspec.inspect.NoneType)]
            if len(rest) != 1:
                return t
            t = rest[0]
        else:
            return t


def _is_duration(t: msgspec.inspect.Type | None) -> bool:
    while isinstance(t, msgspec.inspect.UnionType):
        t = next((m for m in t.types if not isinstance(m, msgspec.inspect.NoneType)), None)
    return (
        isinstance(t, msgspec.inspect.Metadata) and (t.extra or {}).get("bridge_type") == "duration"
    )


def _to_config_error(exc: msgspec.ValidationError, file: str | None) -> ConfigError:
    """Turn msgspec's "<message> - at `$.a[1].b`" into ConfigError(message, path="a[1].b")."""
    m = _AT_RE.match(str(exc))
    assert m is not None  # the pattern matches any string
    message, at = m["msg"], m["at"] or ""
    tokens = list(_tokens(at))
    path = "".join(
        f"[{t}]" if isinstance(t, int) or t == "..." else f".{t}" for t in tokens
    ).lstrip(".")

    cause = exc.__cause__
    if isinstance(cause, _FieldError):
        return ConfigError(cause.message, path=_join(path, cause.field), file=file)
    if isinstance(cause, ValueError | TypeError):
        return ConfigError(str(cause), path=path, file=file)

    if um := _UNKNOWN_RE.fullmatch(message):
        t = _unwrap(_type_at(tokens) or msgspec.inspect.AnyType())
        allowed = (
            ", ".join(f.encode_name for f in t.fields)
            if isinstance(t, msgspec.inspect.StructType)
            else ""
        )
        hint = f"; allowed keys: {allowed}" if allowed else ""
        return ConfigError(
            f"unknown key {um['key']!r}{hint}", path=_join(path, um["key"]), file=file
        )
    if mm := _MISSING_RE.fullmatch(message):
        return ConfigError("required key is missing", path=_join(path, mm["key"]), file=file)
    if em := _ENUM_RE.fullmatch(message):
        t = _unwrap(_type_at(tokens) or msgspec.inspect.AnyType())
        if isinstance(t, msgspec.inspect.LiteralType):
            allowed = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in t.values)
            return ConfigError(
                f"invalid value {em['value']}; allowed: {allowed}", path=path, file=file
            )
    if message.startswith("Expected `str`") and _is_duration(_type_at(tokens)):
        got = message.partition(", got ")[2].strip("`") or "another type"
        return ConfigError(
            f"expected a duration string, got {got}; {_DURATION_HINT}", path=path, file=file
        )
    # Anything else ("Expected `int`, got `str`"): msgspec's words, minus the markup.
    plain = message.replace("`", "")
    return ConfigError(plain[:1].lower() + plain[1:], path=path, file=file)


# --------------------------------------------------------------------------- dumping

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# What ``dump_config(redact=True)`` (and so ``bridge check-config``) hides, decided here
# and only here, by field name, so a secret field added later is hidden without a change:
# a field any of whose words (split at "_") is one of these ...
_SECRET_WORDS = frozenset({"secret", "token", "password", "passphrase", "credentials"})
# ... every value of these tables (``app.headers`` carries Authorization headers) ...
_SECRET_TABLES = frozenset({"headers"})
# ... the ``value`` of a ``match.header``/``match.query`` whose name looks like a credential,
# and the password and credential-like query parameters of any URL.
_SECRET_NAME_RE = re.compile(r"auth|token|secret|passw|key|sig|cookie|session", re.IGNORECASE)
REDACTED = "<redacted>"


def _is_secret_field(name: str) -> bool:
    return any(word in _SECRET_WORDS for word in name.lower().split("_"))


def _redact_url(value: str) -> str:
    """``value`` with a URL's password and credential-like query values hidden (other
    strings are returned as they are)."""
    if "://" not in value:
        return value
    try:
        parts = urllib.parse.urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    netloc = parts.netloc
    if password:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_NAME_RE.search(k) for k, _ in pairs):
            query = urllib.parse.urlencode(
                [(k, REDACTED if _SECRET_NAME_RE.search(k) else v) for k, v in pairs], safe="<>"
            )
    if netloc == parts.netloc and query == parts.query:
        return value
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else _toml_str(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _emit(
    out: list[str],
    keys: list[str],
    table: msgspec.Struct | Mapping[str, str],
    *,
    array: bool = False,
    replace: Mapping[str, object] | None = None,
    redact: bool = False,
    redact_all: bool = False,
) -> None:
    """Append ``table`` as a TOML table (scalars first, then its sub-tables).

    ``redact`` hides secrets (see ``_SECRET_WORDS``); ``redact_all`` every value."""
    dotted = ".".join(_toml_key(k) for k in keys)
    out.append(f"[[{dotted}]]" if array else f"[{dotted}]")
    items: list[tuple[str, object]]
    if isinstance(table, msgspec.Struct):
        items = [(name, getattr(table, name)) for name in table.__struct_fields__]
    else:
        items = list(table.items())
    subtables: list[tuple[str, msgspec.Struct | Mapping[str, str]]] = []
    for name, value in items:
        if replace is not None and name in replace:
            value = replace[name]
        if value is None:
            continue  # an absent optional table or an unset carrier
        if isinstance(value, msgspec.Struct | dict):
            if value:  # an empty dict is the default: leave it out
                subtables.append((name, value))
            continue
        if redact and value and isinstance(value, str):
            if redact_all or _is_secret_field(name) or _secret_match_value(table, name):
                value = REDACTED
            else:
                value = _redact_url(value)
        out.append(f"{_toml_key(name)} = {_toml_value(value)}")
    out.append("")
    for name, sub in subtables:
        _emit(out, [*keys, name], sub, redact=redact, redact_all=redact and name in _SECRET_TABLES)


def _secret_match_value(table: object, name: str) -> bool:
    return (
        name == "value"
        and isinstance(table, KeyValueMatch)
        and bool(_SECRET_NAME_RE.search(table.name))
    )


def dump_config(config: Config, *, redact: bool = False) -> str:
    """The resolved configuration as TOML: every default written out, and every route's
    ``[routes.stream]`` holding its effective settings (overrides merged over [stream]).

    Parsing the output gives the same effective configuration. ``redact`` replaces tokens,
    secrets, passwords, ``app.headers`` values and URL credentials with ``"<redacted>"``
    (what ``bridge check-config`` prints unless ``--show-secrets``; such output no longer
    round-trips).
    """
    out = ["# bridge: resolved configuration, every default filled in."]
    if redact:
        out.append(
            f'# Secrets are shown as "{REDACTED}";'
            " `bridge check-config --show-secrets` prints them."
        )
    out.append("")
    for name in config.__struct_fields__:
        if name != "routes":
            _emit(out, [name], getattr(config, name), redact=redact)
    for route in config.routes:
        _emit(
            out,
            ["routes"],
            route,
            array=True,
            replace={"stream": config.route_stream(route)},
            redact=redact,
        )
    return "\n".join(out).rstrip("\n") + "\n"
