"""Who really connected, and to which URL: ``X-Forwarded-*`` from trusted proxies only.

Behind a TLS-terminating proxy (nginx, HAProxy, a cloud load balancer) bridge's TCP peer
is the proxy, the scheme it sees is ``ws`` and the Host may be an internal name, while the
carrier dialled ``wss://public-host/path`` and signed that URL (Twilio's
``X-Twilio-Signature``). The proxy reports the original in headers, and anybody can send
the same headers, so they count only when the TCP peer is in ``[websocket]
trusted_proxies``. Pure code (no I/O), fuzzed: the headers are outside input.

Which headers (docs/configuration.md says the same):

* ``X-Forwarded-For``: the client address. Each proxy appends the address it got the
  connection from, so the list is read from the right: skip entries that are themselves
  trusted proxies; the first one that is not is the client (nginx's
  ``real_ip_recursive``). Anything left of it was written by the client and is ignored.
  An entry that is not an IP address ends the walk at the last good hop.
* ``X-Forwarded-Proto`` and ``X-Forwarded-Host``: the scheme and host the outermost
  trusted proxy received. A single value (proxies that overwrite) is used as is; a comma
  list (proxies that append) is read like ``X-Forwarded-For``, one entry per trusted hop.
* ``Forwarded`` (RFC 7239) is **not** read. Proxies emit one family or the other, and a
  proxy that sets ``X-Forwarded-*`` passes a client's own ``Forwarded`` header through
  untouched (nginx does by default): believing both would let any caller choose its
  address and URL.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import msgspec

from ..transports import format_peer

__all__ = ["FORWARDED_HEADERS", "Origin", "resolve_origin"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})

# RFC 9110 §7.2 Host = uri-host [ ":" port ]; uri-host is a reg-name, IPv4 or [IPv6].
# Stricter than the RFC's reg-name (no percent-encoding or sub-delims): a host that
# goes into a signed URL should be a DNS name.
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::[0-9]{1,5})?")
_SCHEMES = {"https": "wss", "wss": "wss", "http": "ws", "ws": "ws"}


class Origin(msgspec.Struct, frozen=True):
    """Where a handshake came from, as far as bridge can believe it."""

    client: str
    """The client's IP address: from ``X-Forwarded-For`` via a trusted proxy, else the
    TCP peer's."""
    client_port: int
    """The client's port when known (the TCP peer's), else 0."""
    scheme: str | None = None
    """``"wss"``/``"ws"`` from a trusted ``X-Forwarded-Proto``; None: not forwarded."""
    host: str | None = None
    """``host[:port]`` from a trusted ``X-Forwarded-Host``; None: not forwarded."""
    proxy: str = ""
    """The trusted proxy (``ip:port`` of the TCP peer) when the request came through one."""
    ignored: bool = False
    """Forwarding headers arrived from a peer that is not a trusted proxy: not used."""

    @property
    def label(self) -> str:
        """For log lines: ``203.0.113.7 via 10.0.0.2:43210``, or ``ip:port``."""
        own = format_peer((self.client, self.client_port)) if self.client_port else self.client
        return f"{own} via {self.proxy}" if self.proxy and own != self.proxy else own


def _address(text: str) -> IpAddress | None:
    """An IP address, IPv4-mapped IPv6 unwrapped (a dual-stack listener reports IPv4
    peers as ``::ffff:a.b.c.d``)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _forwarded_for(entry: str) -> IpAddress | None:
    """One ``X-Forwarded-For`` entry: ``a.b.c.d``, ``a.b.c.d:port``, ``::1``,
    ``[::1]`` or ``[::1]:port`` (proxies differ); None for anything else."""
    entry = entry.strip()
    if entry.startswith("["):
        inner, sep, _rest = entry[1:].partition("]")
        return _address(inner) if sep else None
    if entry.count(":") == 1:  # IPv4 with a port
        entry = entry.partition(":")[0]
    return _address(entry)


def _values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every comma-separated value of header ``name`` over all its lines, in order
    (RFC 9110 §5.3: repeated lines are one comma-joined list)."""
    out: list[str] = []
    for key, value in headers:
        if key.lower() == name:
            out.extend(part.strip() for part in value.split(","))
    return out


def _trusted(ip: IpAddress, trusted: tuple[IpNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in trusted)


def _pick(values: list[str], hops: int) -> str | None:
    """The value written by the outermost of ``hops`` trusted proxies."""
    if not values:
        return None
    return values[max(0, len(values) - hops)]


def resolve_origin(
    peer: tuple[str, int],
    headers: Iterable[tuple[str, str]],
    trusted: tuple[IpNetwork, ...],
) -> Origin:
    """The origin of a handshake from TCP ``peer`` with these request ``headers``."""
    headers = list(headers)
    peer_ip = _address(peer[0])
    forwarded = any(key.lower() in FORWARDED_HEADERS for key, _ in headers)
    if peer_ip is None or not trusted or not _trusted(peer_ip, trusted):
        address = str(peer_ip) if peer_ip is not None else peer[0]
        return Origin(client=address, client_port=peer[1], ignored=forwarded)
    proxy = format_peer((str(peer_ip), peer[1]))
    if not forwarded:
        # A trusted peer that forwards nothing: it is the client (a health check, an
        # internal caller, or a proxy configured without the headers).
        return Origin(client=str(peer_ip), client_port=peer[1])
    client: IpAddress = peer_ip
    client_port = peer[1]
    hops = 1  # trusted proxies on the path, the TCP peer included
    for entry in reversed(_values(headers, "x-forwarded-for")):
        ip = _forwarded_for(entry)
        if ip is None:
            break  # not an address: stop at the last hop we can name
        client, client_port = ip, 0
        if not _trusted(ip, trusted):
            break
        hops += 1
    proto = _pick(_values(headers, "x-forwarded-proto"), hops)
    scheme = _SCHEMES.get(proto.lower()) if proto else None
    host = _pick(_values(headers, "x-forwarded-host"), hops)
    if host is not None and not _HOST_RE.fullmatch(host):
        host = None
    return Origin(
        client=str(client), client_port=client_port, scheme=scheme, host=host, proxy=proxy
    )
