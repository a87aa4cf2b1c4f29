"""``host:port`` text, both ways: the one parser and the one formatter of addresses.

The config's ``listen`` keys, ``bridge echo-server --listen``, ``bridge call --target``,
the admin API's ``remote`` of an RTP stream and the ``local`` it answers with are all
this form, so they are all read by :func:`parse_host_port` (and written by
:func:`format_peer`). IPv6 addresses go in brackets, as in a URL's authority (RFC 3986
§3.2.2): ``"[::1]:8080"``. Without them ``"::1:8080"`` is ambiguous (it is itself a
valid IPv6 address), so an unbracketed IPv6 address is an error that says so.

Pure code.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = ["HOST_PORT_FORM", "format_peer", "host_problem", "parse_host_port"]

#: The end of every message about the form itself (callers may add their own hint).
HOST_PORT_FORM: Final = 'expected "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"'

# One DNS label (RFC 1123 §2.1: letters, digits, hyphens; not at either end).
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_problem(host: str, *, listen: bool = False, ip_only: bool = False) -> str | None:
    """Why ``host`` is not an IPv4 address or a DNS hostname (with ``ip_only``: not an
    IPv4 address), or None when it is one. IPv6 is the caller's: it comes bracketed in
    ``host:port`` and bare where a bind address stands alone. ``listen``: an address to
    bind (the hint for an empty one names the wildcard)."""
    if not host:
        return "the host is empty" + (" (use 0.0.0.0 for every interface)" if listen else "")
    labels = host.split(".")
    if ip_only or all(label.isdigit() for label in labels):
        # All-numeric: it was meant as an IPv4 address, so hold it to that.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv4 address"
        return None
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return f"{host!r} is not a valid hostname or IP address"
    return None


def parse_host_port(
    text: str,
    *,
    listen: bool = False,
    ip_only: bool = False,
    default_host: str | None = None,
) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; ``"[::1]:8080"`` → ``("::1", 8080)``.

    The brackets of an IPv6 address are dropped, so the host can be handed to a socket
    call as is. The host is an IPv4 address, a DNS hostname or a bracketed IPv6
    address; with ``ip_only`` an IP address only (a peer's media address: nothing to
    resolve). ``listen``: an address to bind, where port 0 asks the kernel for a free
    port; otherwise the port is 1..65535. ``default_host`` stands in for an empty host
    (``":9000"``); without it an empty host is an error.

    Raises ValueError with a message that names what is wrong; a message about the form
    itself ends with :data:`HOST_PORT_FORM`.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, not {text!r}; {HOST_PORT_FORM}")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid address {text!r}; {HOST_PORT_FORM}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {text!r}; {HOST_PORT_FORM}")
        if ":" in host:
            raise ValueError(f'an IPv6 address needs brackets, e.g. "[{host}]:{port_text}"')
        if not host and default_host is not None:
            host = default_host
        else:
            problem = host_problem(host, listen=listen, ip_only=ip_only)
            if problem is not None:
                raise ValueError(f"{problem}; {HOST_PORT_FORM}")
    # Port 0 asks the kernel for a free port: right for a listener (tests and ad-hoc
    # runs use it), never for a peer. isdigit() alone would take "²" or "٣".
    lowest = 0 if listen else 1
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) <= 65535:
        free = " (0 = any free port)" if listen else ""
        raise ValueError(f"invalid port {port_text!r} in {text!r}: a port is 1..65535{free}")
    return host, int(port_text)


def format_peer(peer: tuple[str, int]) -> str:
    """``"192.0.2.1:5060"``, ``"[2001:db8::1]:5060"``: what :func:`parse_host_port` reads."""
    host, port = peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
